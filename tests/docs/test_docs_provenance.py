"""The README's pictures in docs/ belong to the shipped default model and CLT: docs/provenance.json (written by
docs/screenshots.py) records both content hashes and each picture's sha256, and every picture the README shows is
recorded there."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from tracer.features.cli import transcoders_hash
from tracer.models import load_model
from transcoders import DEFAULT_TRANSCODERS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
STALE = "docs pictures are stale: rerun .venv/bin/python docs/screenshots.py"
README_PICTURE = re.compile(r"\]\(docs/([^)\s]+\.(?:png|svg))\)")  # markdown image links into docs/


def provenance() -> dict:
    path = DOCS / "provenance.json"
    assert path.is_file(), STALE
    return json.loads(path.read_text())


def test_pictures_were_made_from_the_shipped_model_and_clt():
    record = provenance()
    assert record["model_hash"] == load_model().content_hash, STALE
    assert record["transcoders_hash"] == transcoders_hash(DEFAULT_TRANSCODERS), STALE


def test_recorded_pictures_are_the_files_on_disk():
    files = provenance()["files"]
    assert files, STALE
    for name, digest in files.items():
        path = DOCS / name
        assert path.is_file(), f"docs/{name} is recorded but missing: {STALE}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"docs/{name} changed by hand: {STALE}"


def test_every_readme_picture_is_recorded():
    shown = set(README_PICTURE.findall((ROOT / "README.md").read_text()))
    assert shown, "the README shows no picture from docs/ (has its image syntax changed?)"
    missing = sorted(shown - set(provenance()["files"]))
    assert not missing, f"README pictures not built by docs/screenshots.py: {missing}"
