"""The shipped feature store belongs to the shipped CLT and model (rebuild: `python -m tracer.bundle features`),
fits its size budget, and reads like a feature store of any good default model."""

from __future__ import annotations

from tracer.features import open_store, store_path
from tracer.features.cli import transcoders_hash
from tracer.models import load_model
from transcoders import DEFAULT_TRANSCODERS

BUDGET = 28_000_000  # 16,384 features at ~1.6 KB each, 98.5 % of them live in v4 (v2 store: 8,192 features, 11.8 MB)
REBUILD = "stale shipped feature store: run `python -m tracer.bundle features`"


def test_shipped_store_matches_the_shipped_clt_and_model():
    path = store_path(DEFAULT_TRANSCODERS)
    assert path.is_file(), REBUILD
    db = open_store(path)
    assert db.transcoders_hash == transcoders_hash(DEFAULT_TRANSCODERS), REBUILD
    assert db.provenance["model"]["content_hash"] == load_model().content_hash, REBUILD
    assert path.stat().st_size <= BUDGET


def test_shipped_store_finds_a_france_feature():
    """Behaviour, not numbers: some feature's top contexts peak on " France" and its label names it."""
    db = open_store(store_path(DEFAULT_TRANSCODERS), transcoders_hash(DEFAULT_TRANSCODERS))
    hits = db.search("France", limit=5)
    assert hits
    info = db.describe(hits[0].layer, hits[0].feature)
    top = [c for c in info.contexts if c.band == "top"]
    assert sum(c.tokens[c.peak].strip() == "France" for c in top) >= len(top) // 2
    assert "France" in info.label
