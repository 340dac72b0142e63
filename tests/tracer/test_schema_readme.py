"""The README's graph-file section matches tracer.schema: its schema_version, and every field of the file's models
named in it (a field added to the schema without a word in the README fails here)."""

from __future__ import annotations

import re
from pathlib import Path

from tracer.schema import SCHEMA_VERSION, GraphEdge, GraphFile, GraphNode, Metadata, ViewState

README = Path(__file__).resolve().parents[2] / "README.md"


def graph_file_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("**Graph file** `NAME.json`")
    return text[start : text.index("**Sidecar**", start)]


def test_readme_states_the_current_schema_version():
    m = re.search(r"`schema_version` (\d+)", graph_file_section())
    assert m is not None and int(m.group(1)) == SCHEMA_VERSION


def test_readme_names_every_graph_file_field():
    named = set(re.findall(r"`(\w+)`", graph_file_section()))
    for model in (GraphFile, Metadata, GraphNode, GraphEdge, ViewState):
        missing = set(model.model_fields) - named
        assert not missing, f"{model.__name__} fields missing from the README's graph-file section: {missing}"
