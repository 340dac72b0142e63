"""GraphStore: only files inside the served folder open; listing; cache freshness; re-pruning; scores; saving."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

import tracer.graphfile as gf
from tracer.errors import GraphFileError
from tracer.graphfile import load_graph, save_graph
from tracer.layout import NodeKind
from tracer.prune import prune
from tracer.result import Attribution
from tracer.schema import GraphFile, Supernode, ViewState, node_id
from tracer.scores import graph_scores
from viewer import data
from viewer.data import GraphStore

BAD_IDS = ["../small.json", "/etc/passwd", "sub/../../x.json", "small.txt", "C:\\small.json", "a//small.json",
           "./small.json", "sub/..", "", "missing.json", "x\n.json"]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_IDS)
def test_resolve_rejects(graph_dir: Path, bad: str):
    with pytest.raises(GraphFileError):
        GraphStore(graph_dir).resolve(bad)


def test_resolve_accepts_inside_and_blocks_symlinks_out(graph_dir: Path, tmp_path_factory):
    sub = graph_dir / "sub"
    sub.mkdir()
    (sub / "copy.json").write_bytes((graph_dir / "small.json").read_bytes())
    outside = tmp_path_factory.mktemp("outside") / "secret.json"
    outside.write_text("{}")
    (graph_dir / "link.json").symlink_to(outside)
    store = GraphStore(graph_dir)
    assert store.resolve("sub/copy.json") == (sub / "copy.json").resolve()
    with pytest.raises(GraphFileError, match="outside"):
        store.resolve("link.json")
    single = GraphStore(graph_dir / "small.json")
    assert single.resolve(None) == single.resolve("small.json") == (graph_dir / "small.json").resolve()
    with pytest.raises(GraphFileError):
        single.resolve("sub/copy.json")


def test_entries(graph_dir: Path, graph: GraphFile):
    (graph_dir / "broken.json").write_text("{not json")
    (graph_dir / ".hidden.json").write_text("{}")
    (graph_dir / "graph-metadata.json").write_text("{}")
    entries = {e.graph_id: e for e in GraphStore(graph_dir).entries()}
    assert set(entries) == {"small.json", "broken.json"}
    ok = entries["small.json"]
    assert (ok.prompt, ok.model, ok.n_nodes, ok.error) == (graph.metadata.prompt, "synthetic", len(graph.nodes), "")
    assert ok.scores == graph.metadata.scores and ok.created == graph.metadata.created
    assert "not valid JSON" in entries["broken.json"].error


def test_cache_follows_file_changes(graph_dir: Path, graph: GraphFile):
    store = GraphStore(graph_dir)
    first = store.load("small.json")
    assert store.load("small.json") is first  # cached
    changed = graph.model_copy(deep=True)
    changed.metadata.prompt = "re-traced"
    save_graph(graph_dir / "small.json", changed)
    st = (graph_dir / "small.json").stat()
    os.utime(graph_dir / "small.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    assert store.load("small.json").view.graph.metadata.prompt == "re-traced"


def test_threshold_reprunes_like_prune(graph_dir: Path, attribution: Attribution):
    store = GraphStore(graph_dir)
    for t in (0.5, 0.99):
        loaded = store.load("small.json", t)
        ref = prune(attribution, node_threshold=t, edge_threshold=0.99)
        want = {node_id(attribution.layout.node(r)) for r in ref.node_mask.nonzero().flatten().tolist()}
        assert {n.id for n in loaded.view.graph.nodes} == want and loaded.threshold == t
        assert len(loaded.view.graph.edges) == ref.n_edges
    assert len(store.load("small.json", 0.5).view.graph.nodes) < len(store.load("small.json", 0.99).view.graph.nodes)


def test_reprunes_are_cached_by_threshold(graph_dir: Path, monkeypatch):
    calls: list[float] = []
    real = data.reprune_loaded
    monkeypatch.setattr(data, "reprune_loaded", lambda g, a, t, e: calls.append(t) or real(g, a, t, e))
    store = GraphStore(graph_dir)
    first = store.load("small.json", 0.5)
    assert store.load("small.json", 0.5) is first and calls == [0.5]  # the same threshold: pruned once
    other = store.load("small.json", 0.7)
    assert calls == [0.5, 0.7] and other.threshold == 0.7 and other is not first
    assert len(other.view.graph.nodes) > len(first.view.graph.nodes)
    assert store.load("small.json", 0.5) is first and store.load("small.json", 0.7) is other
    assert store.load("small.json").threshold is None and calls == [0.5, 0.7]  # the file's own pruning


def test_without_sidecar_threshold_is_ignored(graph_dir: Path, graph: GraphFile):
    save_graph(graph_dir / "bare.json", graph)
    loaded = GraphStore(graph_dir).load("bare.json", 0.5)
    assert not loaded.has_sidecar and loaded.threshold is None and len(loaded.view.graph.nodes) == len(graph.nodes)


def test_subgraph_scores(graph_dir: Path, attribution: Attribution):
    store = GraphStore(graph_dir)
    loaded = store.load("small.json")
    feats = [n.id for n in loaded.view.graph.nodes if n.kind is NodeKind.FEATURE][:2]
    lay = attribution.layout
    keep = lay.mask(NodeKind.EMBEDDING) | lay.mask(NodeKind.LOGIT)
    for r in range(lay.n_nodes):
        keep[r] |= node_id(lay.node(r)) in feats
    want = graph_scores(attribution.adjacency, lay, attribution.logit_probs, keep_mask=keep)
    assert store.subgraph_scores(loaded, tuple(feats)) == want
    assert store.subgraph_scores(loaded, ()) is None
    full = graph_scores(attribution.adjacency, lay, attribution.logit_probs, keep_mask=torch.ones(lay.n_nodes) > 0)
    assert want.completeness <= full.completeness + 1e-12


def test_save_view(graph_dir: Path):
    store = GraphStore(graph_dir)
    original = load_graph(graph_dir / "small.json")
    view = ViewState(clicked="x", pinned=["a", "b"], supernodes=[Supernode(label="g", members=["a", "b"])],
                     labels={"a": "<b>bold?</b>"}, node_threshold=0.6)  # fmt: skip
    before = (graph_dir / "small.adjacency.safetensors").stat().st_mtime_ns
    time.sleep(0.01)
    store.save_view("small.json", view)
    saved = load_graph(graph_dir / "small.json")
    assert saved.view == view and saved.model_copy(update={"view": original.view}) == original
    assert (graph_dir / "small.adjacency.safetensors").stat().st_mtime_ns == before  # sidecar untouched
    assert not [p for p in graph_dir.iterdir() if p.name.endswith(".tmp")]  # atomic: no temp file left


def test_picker_reads_nothing_through_a_symlink_out(graph_dir: Path, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "g.json"
    secret = load_graph(graph_dir / "small.json")
    secret.metadata.prompt = "a secret prompt"
    save_graph(outside, secret)
    (graph_dir / "link.json").symlink_to(outside)
    entries = {e.graph_id: e for e in GraphStore(graph_dir).entries()}
    link = entries["link.json"]
    assert "outside the served folder" in link.error
    assert (link.prompt, link.model, link.scores, link.n_nodes) == ("", "", None, 0)
    assert entries["small.json"].prompt == "The capital of France is"


def test_corrupt_sidecar_is_found_at_open(graph_dir: Path, graph: GraphFile):
    side = graph_dir / "small.adjacency.safetensors"
    side.write_bytes(side.read_bytes()[:200])  # truncated
    store = GraphStore(graph_dir)
    loaded = store.load("small.json", 0.5)  # a threshold from the URL is ignored: the saved graph shows
    assert not loaded.has_sidecar and loaded.threshold is None
    assert len(loaded.view.graph.nodes) == len(graph.nodes)
    assert "sidecar" in loaded.sidecar_note and "re-pruning" in loaded.sidecar_note
    assert str(graph_dir) not in loaded.sidecar_note  # named relative to the served folder
    assert store.subgraph_scores(loaded, ("F0.1@1",)) is None


def test_messages_name_paths_relative_to_the_folder(graph_dir: Path):
    (graph_dir / "sub").mkdir()
    (graph_dir / "sub" / "bad.json").write_text("{oops")
    store = GraphStore(graph_dir)
    with pytest.raises(GraphFileError) as e:
        store.load("sub/bad.json")
    assert store.public(str(e.value)).startswith("sub/bad.json is not valid JSON")
    assert {e.graph_id: e for e in store.entries()}["sub/bad.json"].error.startswith("sub/bad.json is not valid JSON")


@pytest.mark.parametrize("record", [{"adjacency_size": 1}, {"adjacency_hash": "0" * 32}], ids=["size", "hash"])
def test_stale_sidecar_is_refused_at_open(graph_dir: Path, graph: GraphFile, monkeypatch, record: dict):
    """A sidecar whose size or hash is not what the JSON records is not used (from its header alone: no tensor is
    read); the saved graph still shows, with a note naming the stale pair."""
    g = load_graph(graph_dir / "small.json")
    for k, v in record.items():
        setattr(g.metadata, k, v)
    save_graph(graph_dir / "small.json", g)  # the JSON alone: the sidecar stays as it was
    monkeypatch.setattr(gf, "safe_open", lambda *a, **k: pytest.fail("sidecar tensors read"))
    store = GraphStore(graph_dir)
    loaded = store.load("small.json", 0.5)
    assert not loaded.has_sidecar and loaded.threshold is None and len(loaded.view.graph.nodes) == len(graph.nodes)
    why = "size" if "adjacency_size" in record else "content hash"
    assert loaded.sidecar_note.startswith(f"small.adjacency.safetensors does not belong to small.json ({why} ")
    assert loaded.sidecar_note.endswith("re-pruning and subgraph scores are off")
    assert store.subgraph_scores(loaded, ("F0.1@1",)) is None
