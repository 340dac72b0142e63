"""Neuronpedia JSON fields and id conventions (written out by hand), graph-metadata.json, GraphML round trip."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch

from tests.tracer.graph_fixtures import attribution_from_dense, random_attribution
from tracer.export import cantor_pair, to_neuronpedia, write_graphml, write_neuronpedia
from tracer.graphfile import build_graph_file
from tracer.layout import NodeLayout
from tracer.prune import prune
from tracer.schema import Identity, Supernode

MODEL = Identity(name="tiny-gpt2", content_hash="abc", kind="gpt2")
TC = Identity(name="tiny-clt", content_hash="def", kind="clt")


def hand_graph():
    """2 layers, tokens [7, 8], features (0, 0, 2) and (1, 1, 4), logits for tokens 3 (p .6) and 11 (p .3)."""
    lay = NodeLayout(2, torch.tensor([7, 8]), torch.tensor([[0, 0, 2], [1, 1, 4]]), torch.tensor([3, 11]))
    f0, f1 = lay.feature_rows().tolist()
    e01, e11 = int(lay.error_rows(0, 1)), int(lay.error_rows(1, 1))
    t0, t1 = int(lay.embedding_rows(0)), int(lay.embedding_rows(1))
    l3, l11 = lay.logit_rows().tolist()
    a = torch.zeros(lay.n_nodes, lay.n_nodes)
    for (t, s), w in {(f0, t0): 1.0, (f1, f0): 2.0, (f1, e01): 0.5, (l3, f1): 1.5, (l3, t1): 1.0, (l11, e11): 0.7,
                      (l11, f1): -0.2}.items():  # fmt: skip
        a[t, s] = w
    attr = attribution_from_dense(a, lay, torch.tensor([0.6, 0.3]), token_strs=["<bos>", "\n"])
    res = prune(attr, node_threshold=1.0, edge_threshold=1.0)
    g = build_graph_file(attr, res, prompt="\n", model=MODEL, transcoders=TC, settings={}, labels={"F1.4@1": "says x"})
    return attr, res, g, {"f0": f0, "f1": f1, "t1": t1}


def test_cantor_pair():
    assert [cantor_pair(0, 0), cantor_pair(1, 0), cantor_pair(0, 1), cantor_pair(0, 2), cantor_pair(1, 4)] == [
        0, 1, 2, 5, 19]  # fmt: skip


def test_neuronpedia_nodes_and_ids():
    attr, res, g, rows = hand_graph()
    doc = to_neuronpedia(g, attr, slug="my-graph")
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    assert set(nodes) == {"0_2_0", "1_4_1", "0_-1_1", "1_-1_1", "E_7_0", "E_8_1", "3_3_1", "3_11_1"}
    assert nodes["0_2_0"] | {"influence": None, "activation": None} == {
        "node_id": "0_2_0", "feature": 5, "layer": "0", "ctx_idx": 0, "feature_type": "cross layer transcoder",
        "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": "0_2-0",
        "clerp": "", "influence": None, "activation": None}  # fmt: skip
    f1 = nodes["1_4_1"]
    assert (f1["feature"], f1["jsNodeId"], f1["clerp"]) == (19, "1_4-0", "says x")
    assert f1["influence"] == pytest.approx(float(res.cumulative_influence[rows["f1"]]))
    assert f1["activation"] == pytest.approx(float(attr.activations[1]))
    err = nodes["0_-1_1"]
    assert (err["feature"], err["layer"], err["ctx_idx"], err["feature_type"], err["jsNodeId"]) == (
        -1, "0", 1, "mlp reconstruction error", "0_-1-1")  # fmt: skip
    emb = nodes["E_8_1"]
    assert (emb["feature"], emb["layer"], emb["feature_type"], emb["jsNodeId"]) == (1, "E", "embedding", "E_8-1")
    assert emb["influence"] == pytest.approx(float(res.cumulative_influence[rows["t1"]]))
    lg = nodes["3_3_1"]
    assert (lg["feature"], lg["layer"], lg["feature_type"], lg["jsNodeId"], lg["is_target_logit"]) == (
        3, "3", "logit", "L_3-1", True)  # fmt: skip
    assert lg["token_prob"] == pytest.approx(0.6) and lg["clerp"] == 'Output " w0" (p=0.600)'
    assert not nodes["3_11_1"]["is_target_logit"] and nodes["3_11_1"]["influence"] is None


def test_neuronpedia_links_metadata_qparams():
    attr, _, g, _ = hand_graph()
    g.view.pinned, g.view.clicked = ["F0.2@0", "EMB@1"], "F1.4@1"
    g.view.supernodes = [Supernode(label="grp", members=["F0.2@0", "F1.4@1"])]
    doc = to_neuronpedia(g, attr, slug="my-graph")
    links = {(x["source"], x["target"]): x["weight"] for x in doc["links"]}
    assert links[("0_2_0", "1_4_1")] == 2.0 and links[("1_4_1", "3_11_1")] == pytest.approx(-0.2)
    assert len(links) == 7
    assert doc["metadata"] == {"slug": "my-graph", "scan": "tiny-clt", "transcoder_list": [],
                               "prompt_tokens": ["<bos>", "⏎"], "prompt": "<bos>\n", "node_threshold": 1.0,
                               "schema_version": 1}  # fmt: skip
    assert doc["qParams"] == {"pinnedIds": ["0_2_0", "E_8_1"], "supernodes": [["grp", "0_2_0", "1_4_1"]],
                              "linkType": "both", "clickedId": "1_4_1", "sg_pos": ""}  # fmt: skip


def test_influence_without_sidecar_ranks_file_nodes():
    attr, _, g, _ = hand_graph()
    doc = to_neuronpedia(g, None, slug="x")
    infl = sorted(n["influence"] for n in doc["nodes"] if n["influence"] is not None)
    assert infl[-1] == pytest.approx(1.0) and all(0 < v <= 1.0 + 1e-12 for v in infl)


def test_write_neuronpedia_dir(tmp_path):
    attr, _, g, _ = hand_graph()
    p1 = write_neuronpedia(tmp_path, g, attr, slug="one")
    write_neuronpedia(tmp_path, g, attr, slug="two")
    write_neuronpedia(tmp_path, g, attr, slug="one")
    assert p1 == tmp_path / "one.json" and json.loads(p1.read_text())["metadata"]["slug"] == "one"
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [m["slug"] for m in index["graphs"]] == ["two", "one"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph-metadata.json", "one.json", "two.json"]


def test_graphml_round_trip(tmp_path):
    attr = random_attribution(seed=2)
    res = prune(attr)
    g = build_graph_file(attr, res, prompt="p", model=MODEL, transcoders=TC, settings={})
    path = write_graphml(tmp_path / "g.graphml", g)
    back = nx.read_graphml(path)
    assert set(back.nodes) == {n.id for n in g.nodes}
    assert {(u, v): d["weight"] for u, v, d in back.edges(data=True)} == pytest.approx(
        {(e.source, e.target): e.weight for e in g.edges})  # fmt: skip
    first = g.nodes[0]
    assert back.nodes[first.id]["kind"] == "feature" and back.nodes[first.id]["feature"] == first.feature


def frontend_logit(clerp: str) -> tuple[str, float]:
    """What circuit-tracer's frontend reads from a logit clerp: the token between the first two `"`, and
    `+clerp.split('(p=')[1].split(')')[0]` (a JavaScript number; NaN there blanks the page)."""
    return clerp.split('"')[1], float(clerp.split("(p=")[1].split(")")[0])


@pytest.mark.parametrize("label", ["", "says Paris", 'tricky "(p=0.9)" label'])
def test_logit_clerp_keeps_the_frontend_form(label):
    attr, _, g, _ = hand_graph()
    logit = next(n for n in g.nodes if n.kind.value == "logit")
    if label:
        g.view.labels[logit.id] = label
    nodes = {n["node_id"]: n for n in to_neuronpedia(g, attr)["nodes"]}
    clerp = nodes["3_3_1"]["clerp"]
    assert frontend_logit(clerp) == (" w0", 0.6)
    assert clerp.endswith('Output " w0" (p=0.600)')
    assert clerp.startswith(label.replace('"', "'").replace("(p=", "(p =")) if label else clerp.startswith("Output")
    assert frontend_logit(nodes["3_11_1"]["clerp"]) == (" w1", 0.3)
