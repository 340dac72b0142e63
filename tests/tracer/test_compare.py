"""tracer diff / tracer common on hand-built graphs (expected matches worked out by hand), the diff viewer's
colours, and one-line errors for graphs of different models."""

from __future__ import annotations

import json

import pytest
import torch

from tests.transcoders.conftest import random_transcoder
from tracer.cli import main
from tracer.compare import common, diff
from tracer.errors import ConfigError
from tracer.graphfile import load_graph, save_graph
from tracer.layout import NodeKind
from tracer.models.loading import file_hash
from tracer.schema import GraphEdge, GraphFile, GraphNode, Identity, Metadata, Scores
from tracer.supernodes import auto_supernodes, cluster
from transcoders import save_transcoders
from viewer.diff import ONLY, SAME, create_diff_app, node_colours
from viewer.figures import coordinates
from viewer.model import GraphView

CAPITAL = ["<s>", "The", " capital", " of", " X", " is"]


def feat(layer: int, f: int, pos: int, infl: float) -> GraphNode:
    return GraphNode(id=f"F{layer}.{f}@{pos}", kind=NodeKind.FEATURE, layer=layer, pos=pos, feature=f,
                     activation=1.0, influence=infl)  # fmt: skip


def emb(pos: int, tid: int, tok: str) -> GraphNode:
    return GraphNode(id=f"EMB@{pos}", kind=NodeKind.EMBEDDING, layer=-1, pos=pos, token_id=tid, token=tok,
                     influence=0.2)  # fmt: skip


def logit(pos: int, tid: int, tok: str, p: float) -> GraphNode:
    return GraphNode(id=f"LOGIT{tid}@{pos}", kind=NodeKind.LOGIT, layer=3, pos=pos, token_id=tid, token=tok,
                     probability=p, influence=p)  # fmt: skip


def graph(tokens: list[str], nodes: list[GraphNode], edges: list[tuple[str, str, float]], model: str = "m1",
          prompt: str = "") -> GraphFile:  # fmt: skip
    meta = Metadata(prompt=prompt or "".join(tokens[1:]), tokens=tokens, token_ids=list(range(len(tokens))),
                    model=Identity(name="tiny", content_hash=model), transcoders=Identity(name="clt", content_hash="t"),
                    n_layers=3, settings={"node_threshold": 0.8}, scores=Scores(replacement=0.5, completeness=0.7),
                    n_nodes_unpruned=len(nodes), n_edges_unpruned=len(edges), created="2026-01-01T00:00:00+00:00",
                    tracer_version="test")  # fmt: skip
    return GraphFile(metadata=meta, nodes=nodes,
                     edges=[GraphEdge(source=s, target=t, weight=w, weight_normalized=w) for s, t, w in edges])


def capital(country_tid: int, country_feat: int, answer_tid: int, answer: str, capital_infl: float = 0.5,
            tokens: list[str] = CAPITAL, model: str = "m1") -> GraphFile:  # fmt: skip
    last = len(tokens) - 1
    nodes = [emb(last - 1, country_tid, " X"), emb(last - 3, 5, " capital"), feat(1, country_feat, last - 1, 0.3),
             feat(2, 7, last, capital_infl), logit(last, answer_tid, answer, 0.6)]  # fmt: skip
    edges = [(f"EMB@{last - 1}", f"F1.{country_feat}@{last - 1}", 1.0), (f"EMB@{last - 3}", f"F2.7@{last}", 0.5),
             (f"F1.{country_feat}@{last - 1}", f"LOGIT{answer_tid}@{last}", 0.8),
             (f"F2.7@{last}", f"LOGIT{answer_tid}@{last}", 0.4)]  # fmt: skip
    return graph(tokens, nodes, edges, model=model)


def test_diff_swaps_country_features_and_keeps_the_shared_path():
    france, germany = capital(10, 5, 20, " Paris"), capital(11, 6, 21, " Berlin")
    d = diff(france, germany)
    assert {n.key for n in d.only("a")} == {"F1.5@-2", "EMB10@-2", "LOGIT20"}
    assert {n.key for n in d.only("b")} == {"F1.6@-2", "EMB11@-2", "LOGIT21"}
    shared = {n.key: n for n in d.shared()}
    assert set(shared) == {"F2.7@-1", "EMB5@-4"} and shared["F2.7@-1"].delta == 0.0
    e = {(x.source, x.target): x for x in d.edges}
    assert e["EMB5@-4", "F2.7@-1"].a == 0.5 and e["EMB5@-4", "F2.7@-1"].b == 0.5
    assert e["F1.5@-2", "LOGIT20"].b is None and e["F1.6@-2", "LOGIT21"].a is None
    # positions are matched from the end: a longer B prompt still lines up
    longer = capital(11, 6, 21, " Berlin", 0.9, tokens=["<s>", "So", *CAPITAL[1:]])
    d2 = diff(france, longer)
    assert {n.key: n.delta for n in d2.shared()}["F2.7@-1"] == pytest.approx(0.4)
    assert "F2.7@5" not in {n.key for n in diff(france, longer, align="start").shared()}


def test_diff_cli_text_json_and_different_models(tmp_path, capsys):
    a, b, other = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "o.json"
    save_graph(a, capital(10, 5, 20, " Paris"))
    save_graph(b, capital(11, 6, 21, " Berlin", 0.25))
    save_graph(other, capital(11, 6, 21, " Berlin", model="m2"))
    assert main(["diff", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "2 shared, 3 only in A, 3 only in B" in text and "F1.5@-2" in text and "F1.6@-2" in text
    assert main(["diff", str(a), str(b), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {n["key"]: n["delta"] for n in out["nodes"]}["F2.7@-1"] == pytest.approx(-0.25)
    assert main(["diff", str(a), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: a.json and o.json come from different model") and err.count("\n") == 1


def test_diff_viewer_colours():
    france, germany = capital(10, 5, 20, " Paris"), capital(11, 6, 21, " Berlin", 1.0)
    d = diff(france, germany)
    colours = dict(zip([n.id for n in germany.nodes], node_colours(germany, d), strict=True))
    assert colours["F1.6@4"] == ONLY and colours["EMB@2"] == SAME
    assert colours["F2.7@5"] == "rgb(120,200,120)"  # influence 0.5 -> 1.0: up by half of the larger
    assert node_colours(france, d)[[n.id for n in france.nodes].index("F2.7@5")].startswith("rgb(120,200")
    assert create_diff_app(france, germany, d).layout is not None


def test_common_keeps_features_in_enough_graphs(tmp_path, capsys):
    g1, g2, g3 = capital(10, 5, 20, " Paris", 0.5), capital(11, 6, 21, " Berlin", 0.7), capital(12, 6, 21, " Rome", 0.3)
    res = common([("1", g1), ("2", g2), ("3", g3)], min_share=0.5)
    nodes = {n.id: n for n in res.graph.nodes}
    # F2.7@-1 in 3/3 (mean 0.5), F1.6@-2 in 2/3, F1.5@-2 in 1/3 (dropped); LOGIT21 in 2/3; EMB5@-4 in 3/3
    assert set(nodes) == {"F2.7@-1", "F1.6@-2", "LOGIT21", "EMB5@-4"} and res.n_features == 2
    assert nodes["F2.7@-1"].influence == pytest.approx(0.5) and nodes["F2.7@-1"].label.startswith("in 3/3")
    edges = {(e.source, e.target): e.weight for e in res.graph.edges}
    assert edges == {("EMB5@-4", "F2.7@-1"): 0.5, ("F1.6@-2", "LOGIT21"): 0.8, ("F2.7@-1", "LOGIT21"): 0.4}
    assert res.graph.metadata.tokens == CAPITAL[:4] + [" X", " is"]
    # the viewer can lay it out, and the CLI writes it into the batch folder
    coordinates(GraphView.build(res.graph))
    for i, g in enumerate((g1, g2, g3)):
        save_graph(tmp_path / f"g{i}.json", g)
    assert main(["common", str(tmp_path), "--min-share", "1"]) == 0
    assert {n.id for n in load_graph(tmp_path / "common.json").nodes} == {"F2.7@-1", "EMB5@-4"}
    assert main(["common", str(tmp_path), "--min-share", "1"]) == 0  # an earlier common.json is not an input
    assert "in at least 3 of 3 graphs" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="min-share"):
        common([("1", g1)], min_share=0)


# automatic supernodes


def test_cluster_average_linkage():
    sim = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]], dtype=torch.float64)
    assert cluster(sim, 0.5) == [[0, 1], [2]]
    assert cluster(sim, 0.15) == [[0, 1, 2]]  # mean(0.1, 0.2) = 0.15 joins the pair's cluster
    assert cluster(sim, 0.95) == [[0], [1], [2]]


def _supernode_subject(tmp_path):
    tc = random_transcoder(n_layers=3, d_model=16, n_features=12, skip=False)
    g = torch.Generator().manual_seed(5)
    v, w = torch.randn(tc.cfg.n_out(1), 16, generator=g), torch.randn(tc.cfg.n_out(2), 16, generator=g)
    assert tc.W_dec is not None
    with torch.no_grad():
        tc.W_dec[1][0], tc.W_dec[1][1] = v, v + 0.01 * torch.randn(v.shape, generator=g)  # same direction
        tc.W_dec[2][2], tc.W_dec[2][3] = w, -w  # opposite directions, same label below
        tc.W_dec[2][4] = torch.randn(w.shape, generator=g)
    save_transcoders(tc, tmp_path / "clt")
    nodes = [emb(4, 10, " X"), feat(1, 0, 4, 0.3), feat(1, 1, 4, 0.3), feat(2, 2, 4, 0.2), feat(2, 3, 4, 0.2),
             feat(2, 4, 4, 0.1), logit(5, 20, " Paris", 0.6)]  # fmt: skip
    nodes[3].label = nodes[4].label = "capital"
    edges = [("EMB@4", "F1.0@4", 1.0), ("EMB@4", "F1.1@4", 0.9), ("F1.0@4", "LOGIT20@5", 0.5),
             ("F1.1@4", "LOGIT20@5", 0.4), ("F2.4@4", "LOGIT20@5", 0.1)]  # fmt: skip
    gr = graph(CAPITAL, nodes, edges)
    gr.metadata.transcoders.content_hash = file_hash(sorted((tmp_path / "clt").glob("*.safetensors")))
    return tc, gr


def test_auto_supernodes_group_similar_features_and_cli_writes_them(tmp_path, capsys):
    tc, gr = _supernode_subject(tmp_path)
    groups = auto_supernodes(gr, tc, threshold=0.5)
    assert [(s.label, s.members) for s in groups] == [("L1 ' X'", ["F1.0@4", "F1.1@4"]),
                                                      ("capital", ["F2.2@4", "F2.3@4"])]  # fmt: skip
    assert auto_supernodes(gr, None, threshold=0.9)[0].members == ["F1.0@4", "F1.1@4"]  # edges alone: Jaccard 1
    path = tmp_path / "g.json"
    save_graph(path, gr)
    assert main(["supernodes", str(path), "--transcoders", str(tmp_path / "clt"), "--no-store"]) == 0
    view = load_graph(path).view
    assert [s.members for s in view.supernodes] == [["F1.0@4", "F1.1@4"], ["F2.2@4", "F2.3@4"]]
    assert set(view.pinned) == {"F1.0@4", "F1.1@4", "F2.2@4", "F2.3@4"}
    assert main(["supernodes", str(path), "--no-store", "--dry-run"]) == 0  # grouped features stay as they are
    assert "0 supernodes" in capsys.readouterr().out
    other = random_transcoder(n_layers=3, d_model=16, n_features=12, seed=9)
    save_transcoders(other, tmp_path / "other")
    assert main(["supernodes", str(path), "--transcoders", str(tmp_path / "other")]) == 2
    assert "not the transcoders of this graph" in capsys.readouterr().err


def test_default_model_capitals_diff(tmp_path, capsys):
    """On the default model: the country embedding swaps, ' Paris' is A's answer, the ' capital' token is shared."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "The capital of France is"}\n{"prompt": "The capital of Germany is"}\n')
    assert main(["trace", "--prompts", str(prompts), "-o", str(tmp_path), "--json"]) == 0
    a, b = load_graph(tmp_path / "0001-the-capital-of-france-is.json"), load_graph(
        tmp_path / "0002-the-capital-of-germany-is.json")  # fmt: skip
    d = diff(a, b)
    only_a, only_b = {n.label for n in d.only("a")}, {n.label for n in d.only("b")}
    assert "' France'" in only_a and "' Germany'" in only_b
    paris = next(n for n in d.nodes if n.kind == NodeKind.LOGIT and n.label == "' Paris'")
    assert paris.a is not None and paris.a > 0.3 and (paris.b is None or paris.b < paris.a / 2)
    assert "' capital'" in {n.label for n in d.shared()}
