"""Graph files: build, save/load round trip, the sidecar, schema migration, bad files, re-pruning."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tracer.graph_fixtures import random_attribution
from tracer.errors import GraphFileError
from tracer.graphfile import build_graph_file, load_attribution, load_graph, reprune, save_graph, sidecar_path
from tracer.layout import NodeKind
from tracer.prune import prune
from tracer.schema import SCHEMA_VERSION, Identity, Supernode, node_id
from tracer.scores import graph_scores

MODEL = Identity(name="tiny-gpt2", content_hash="abc123", kind="gpt2")
TC = Identity(name="tiny-clt", content_hash="def456", kind="clt")


def make_graph(seed=0, node_threshold=0.8, edge_threshold=0.98, labels=None):
    attr = random_attribution(n_layers=3, n_pos=6, seed=seed)
    res = prune(attr, node_threshold=node_threshold, edge_threshold=edge_threshold)
    g = build_graph_file(attr, res, prompt="a b c", model=MODEL, transcoders=TC, settings={"batch_size": 4},
                         labels=labels)  # fmt: skip
    return attr, res, g


def test_build_contents():
    attr, res, g = make_graph()
    lay = attr.layout
    rows = res.node_mask.nonzero().flatten().tolist()
    assert [n.id for n in g.nodes] == [node_id(lay.node(r)) for r in rows]
    by_id = {n.id: n for n in g.nodes}
    dense = attr.adjacency.to_dense().double()
    in_abs = dense.abs().sum(1)
    assert len(g.edges) == res.n_edges
    for (t, s), e in zip(res.adjacency.indices().T.tolist(), g.edges, strict=True):
        assert (e.target, e.source) == (node_id(lay.node(t)), node_id(lay.node(s)))
        assert e.weight == pytest.approx(float(dense[t, s]))
        assert e.weight_normalized == pytest.approx(float(dense[t, s] / in_abs[t]))
    frow = rows[0]  # a feature (features come first)
    f = by_id[node_id(lay.node(frow))]
    assert f.kind == NodeKind.FEATURE and f.activation == pytest.approx(float(attr.activations[frow]))
    assert f.influence == pytest.approx(float(res.node_influence[frow]))
    lg = next(n for n in g.nodes if n.kind == NodeKind.LOGIT)
    assert (lg.token, lg.probability, lg.token_id) == (" w0", pytest.approx(float(attr.logit_probs[0])),
                                                       int(lay.logit_tokens[0]))  # fmt: skip
    m = g.metadata
    assert m.settings["node_threshold"] == 0.8 and m.settings["batch_size"] == 4
    assert m.n_nodes_unpruned == lay.n_nodes and m.n_edges_unpruned == attr.adjacency.nnz
    assert m.scores == graph_scores(attr.adjacency, lay, attr.logit_probs)
    assert m.pruned_scores == graph_scores(attr.adjacency, lay, attr.logit_probs, keep_mask=res.node_mask)
    assert m.timings["attribute"] == 1.25 and "prune" in m.timings and m.tokens[1] == "\n"


def test_round_trip_and_sidecar(tmp_path):
    attr, _, g = make_graph(labels={})
    path = save_graph(tmp_path / "g.json", g, attr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.adjacency.safetensors", "g.json"]  # no temp files
    loaded = load_graph(path)
    assert loaded.metadata.adjacency_file == "g.adjacency.safetensors" and g.metadata.adjacency_file is None
    m = loaded.metadata
    assert m.adjacency_size == (tmp_path / "g.adjacency.safetensors").stat().st_size
    assert len(m.adjacency_hash or "") == 32
    m.adjacency_file = m.adjacency_hash = m.adjacency_size = None
    assert loaded == g
    a2 = load_attribution(path)
    assert torch.equal(a2.adjacency.to_dense(), attr.adjacency.to_dense())
    assert torch.equal(a2.layout.table, attr.layout.table)
    for name in ("activations", "logit_probs", "error_norms"):
        assert torch.equal(getattr(a2, name), getattr(attr, name))
    assert (a2.token_strs, a2.logit_strs, a2.timings, a2.stats) == (attr.token_strs, attr.logit_strs, attr.timings,
                                                                    attr.stats)  # fmt: skip
    save_graph(path, loaded)  # overwrite in place: still no temp files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.adjacency.safetensors", "g.json"]


def test_pair_hashed_with_blake2b_still_opens(tmp_path, monkeypatch):
    """Pairs written before the hash became sha256 recorded blake2b-128 in both files: hashes are compared as recorded
    strings, never recomputed, so such a pair still loads; a pair whose two recorded hashes differ does not."""
    import hashlib

    import tracer.pair as gf

    def old_hash(tensors):
        h = hashlib.blake2b(digest_size=16)
        for k in sorted(tensors):
            t = tensors[k].contiguous().reshape(-1)
            h.update(f"{k}|{t.dtype}|{tuple(tensors[k].shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().data)
        return h.hexdigest()

    attr, _, g = make_graph()
    with monkeypatch.context() as m:
        m.setattr(gf, "tensor_hash", old_hash)
        path = save_graph(tmp_path / "g.json", g, attr)
    recorded = load_graph(path).metadata.adjacency_hash
    assert recorded == old_hash(gf.sidecar_tensors(attr, None)[0]) != gf.tensor_hash(gf.sidecar_tensors(attr, None)[0])
    assert torch.equal(load_attribution(path).adjacency.to_dense(), attr.adjacency.to_dense())
    data = json.loads(path.read_text())
    data["metadata"]["adjacency_hash"] = gf.tensor_hash(gf.sidecar_tensors(attr, None)[0])  # not what the sidecar says
    path.write_text(json.dumps(data))
    with pytest.raises(GraphFileError, match="does not match|stale|interrupted"):
        load_attribution(path)


def test_sidecar_found_through_metadata_after_rename(tmp_path):
    attr, _, g = make_graph()
    save_graph(tmp_path / "g.json", g, attr).rename(tmp_path / "renamed.json")
    assert load_attribution(tmp_path / "renamed.json").layout.n_nodes == attr.layout.n_nodes


def test_v1_file_loads(tmp_path):
    _, _, g = make_graph()
    old = json.loads(g.model_dump_json())
    old["schema_version"] = 1
    del old["view"]
    for n in old["nodes"]:
        n["type"] = n.pop("kind")
    for e in old["edges"]:
        del e["weight_normalized"]
    a, b, t = (n["id"] for n in old["nodes"][:3])
    old["edges"] = [{"source": a, "target": t, "weight": 3.0}, {"source": b, "target": t, "weight": -1.0}]
    (tmp_path / "v1.json").write_text(json.dumps(old))
    got = load_graph(tmp_path / "v1.json")
    assert got.schema_version == SCHEMA_VERSION
    assert [n.kind for n in got.nodes] == [n.kind for n in g.nodes]
    assert [e.weight_normalized for e in got.edges] == [0.75, -0.25]
    assert got.view.pinned == []


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"nodes": []}', "schema_version"),
        ('{"schema_version": 99}', "newer"),
        ('{"schema_version": 0}', "unknown schema_version"),
        ("BAD_KIND", "not a valid graph file"),
        ("MISSING_FIELD", "metadata.prompt"),
    ],
)
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    if content in ("BAD_KIND", "MISSING_FIELD"):
        d = json.loads(make_graph()[2].model_dump_json())
        if content == "BAD_KIND":
            d["nodes"][0]["kind"] = "banana"
        else:
            del d["metadata"]["prompt"]
        content = json.dumps(d)
    if content is not None:
        path.write_text(content)
    with pytest.raises(GraphFileError, match=match) as e:
        load_graph(path)
    assert "\n" not in str(e.value)


def test_bad_sidecars(tmp_path):
    attr, _, g = make_graph()
    path = tmp_path / "g.json"
    save_graph(path, g)
    with pytest.raises(GraphFileError, match="sidecar not found"):
        load_attribution(path)
    sidecar_path(path).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(GraphFileError, match="corrupt"):
        load_attribution(path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(sidecar_path(path)))
    with pytest.raises(GraphFileError, match="not a clt-tracer adjacency sidecar"):
        load_attribution(path)


def test_sidecar_inconsistent_with_layout(tmp_path):
    attr, _, g = make_graph()
    attr.activations = attr.activations[:-1]
    save_graph(tmp_path / "g.json", g, attr)
    with pytest.raises(GraphFileError, match="activations has"):
        load_attribution(tmp_path / "g.json")


def test_reprune_equals_prune_and_keeps_view(tmp_path):
    attr, res, g = make_graph()
    first = g.nodes[0].id
    g.nodes[0].label = "my feature"
    g.view.pinned = [first]
    g.view.supernodes = [Supernode(label="group", members=[first])]
    g.view.labels = {first: "edited"}
    path = save_graph(tmp_path / "g.json", g, attr)
    new = reprune(path, node_threshold=0.95, edge_threshold=0.99)
    ref = prune(load_attribution(path), node_threshold=0.95, edge_threshold=0.99)
    lay = attr.layout
    assert [n.id for n in new.nodes] == [node_id(lay.node(r)) for r in ref.node_mask.nonzero().flatten().tolist()]
    assert len(new.edges) == ref.n_edges > len(g.edges)
    assert new.view == g.view and next(n for n in new.nodes if n.id == first).label == "my feature"
    assert new.metadata.settings["node_threshold"] == 0.95 and new.metadata.created == g.metadata.created
    assert new.metadata.adjacency_file == "g.adjacency.safetensors"
