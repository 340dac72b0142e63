"""Export outputs are never half-written: a write that fails halfway (a full disk) or a serializer that fails after
writing part leaves the old file as it was, or no file, and no temp file (GraphML, Neuronpedia JSON and its
graph-metadata.json, `tracer export`, the validation plot)."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from types import SimpleNamespace

import networkx as nx
import pytest

import tracer.export
from tests.tracer.graph_fixtures import random_attribution
from tests.tracer.half_write import fail_halfway, snapshot
from tracer.cli import main
from tracer.errors import OutputError
from tracer.export import to_neuronpedia, write_graphml, write_neuronpedia
from tracer.graphfile import build_graph_file, save_graph
from tracer.prune import prune
from tracer.schema import GraphFile, Identity
from tracer.validate_cli import _plots

ID = Identity(name="tiny", content_hash="0", kind="clt")


def graph(seed: int, prompt: str = "old text") -> GraphFile:
    attr = random_attribution(n_layers=3, n_pos=5, seed=seed)
    return build_graph_file(attr, prune(attr), prompt=prompt, model=ID, transcoders=ID, settings={})


def test_graphml_write_failing_halfway_keeps_the_old_file(tmp_path: Path, monkeypatch):
    target = write_graphml(tmp_path / "g.graphml", graph(0))
    before = snapshot(tmp_path)
    log = fail_halfway(monkeypatch)
    with pytest.raises(OutputError, match="cannot write .*g.graphml: No space left on device"):
        write_graphml(target, graph(1, "new text"))
    [(partial, size)] = log
    assert partial != target and partial.parent == tmp_path and size > 100  # half the new file was on disk ...
    assert snapshot(tmp_path) == before  # ... in a temp file, now gone; the old file is untouched
    monkeypatch.undo()
    assert nx.read_graphml(target).graph["prompt"] == "old text"


def test_graphml_failing_halfway_creates_no_file(tmp_path: Path, monkeypatch):
    fail_halfway(monkeypatch)
    with pytest.raises(OutputError):
        write_graphml(tmp_path / "g.graphml", graph(0))
    assert snapshot(tmp_path) == {}


def test_graphml_serializer_failing_after_part_leaves_the_old_file(tmp_path: Path, monkeypatch):
    target = write_graphml(tmp_path / "g.graphml", graph(0))
    before = snapshot(tmp_path)
    real = nx.write_graphml

    def broken(g, out, **kw):
        buf = io.BytesIO()
        real(g, buf, **kw)
        part = buf.getvalue()[: len(buf.getvalue()) // 2]
        out.write(part) if hasattr(out, "write") else Path(out).write_bytes(part)
        raise ValueError("serializer crashed")

    monkeypatch.setattr(tracer.export.nx, "write_graphml", broken)
    with pytest.raises(ValueError, match="serializer crashed"):
        write_graphml(target, graph(1, "new text"))
    assert snapshot(tmp_path) == before


def test_neuronpedia_graph_write_failing_halfway_keeps_both_old_files(tmp_path: Path, monkeypatch):
    write_neuronpedia(tmp_path, graph(0), slug="g")
    write_neuronpedia(tmp_path, graph(2), slug="other")
    before = snapshot(tmp_path)
    assert sorted(before) == ["g.json", "graph-metadata.json", "other.json"]
    log = fail_halfway(monkeypatch)
    with pytest.raises(OutputError, match="g.json: No space left on device"):
        write_neuronpedia(tmp_path, graph(1, "new text"), slug="g")
    assert len(log) == 1 and log[0][0].name.startswith(".g.json.")  # failed in the graph file, first
    assert snapshot(tmp_path) == before


def test_neuronpedia_index_write_failing_halfway_keeps_the_old_index(tmp_path: Path, monkeypatch):
    write_neuronpedia(tmp_path, graph(0), slug="g")
    index_before = (tmp_path / "graph-metadata.json").read_bytes()
    new = graph(1, "new text")
    log = fail_halfway(monkeypatch, skip=1)  # the graph file is written, then its index entry fails
    with pytest.raises(OutputError, match="graph-metadata.json: No space left on device"):
        write_neuronpedia(tmp_path, new, slug="g")
    assert len(log) == 1 and log[0][0].name.startswith(".graph-metadata.json.")
    files = snapshot(tmp_path)
    assert sorted(files) == ["g.json", "graph-metadata.json"]  # no temp file
    assert files["graph-metadata.json"] == index_before
    assert json.loads(files["g.json"]) == to_neuronpedia(new, slug="g")  # whole: the new graph, not half of it


def test_export_cli_failing_halfway_is_one_line_and_keeps_the_target(tmp_path: Path, monkeypatch, capsys):
    path = save_graph(tmp_path / "g.json", graph(0))
    out = tmp_path / "out.graphml"
    out.write_text("old export")
    before = snapshot(tmp_path)
    fail_halfway(monkeypatch)
    assert main(["export", str(path), "--to", "graphml", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and "No space left on device" in err and err.count("\n") == 1
    assert snapshot(tmp_path) == before


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture
def png_export(monkeypatch):
    """Plotly's image export as if kaleido worked: the figure's PNG is PNG (no browser is started)."""
    import plotly.graph_objects as go

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "kaleido" else real(name, *a))
    monkeypatch.setattr(go.Figure, "to_image", lambda self, *a, **k: PNG)


def validation():
    c = SimpleNamespace(features=[(0, 1, 2)], predicted=-0.5, measured=-0.25, label="F0.1@2")
    return SimpleNamespace(candidates=[c], target=" Paris", mode="replacement", spearman_signed=1.0,
                           spearman_influence=1.0)  # fmt: skip


def test_validation_png_is_written_whole(tmp_path: Path, png_export):
    r = _plots(validation(), tmp_path / "r.json", "prompt")
    assert r == {"html": str(tmp_path / "r.html"), "png": str(tmp_path / "r.png")}
    assert (tmp_path / "r.png").read_bytes() == PNG and sorted(snapshot(tmp_path)) == ["r.html", "r.png"]


def test_validation_png_failing_halfway_keeps_the_old_png(tmp_path: Path, png_export, monkeypatch):
    (tmp_path / "r.png").write_bytes(b"old plot")
    log = fail_halfway(monkeypatch, skip=1)  # the HTML plot is written, the PNG fails halfway
    r = _plots(validation(), tmp_path / "r.json", "prompt")
    assert r["png"] is None and "No space left on device" in r["png_error"]
    assert len(log) == 1 and log[0][1] == len(PNG) // 2
    files = snapshot(tmp_path)
    assert sorted(files) == ["r.html", "r.png"] and files["r.png"] == b"old plot"
