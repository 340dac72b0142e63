"""Pruning: influence against a dense matrix inverse, hand-computed thresholds, and circuit-tracer's dense
algorithm transcribed as an independent reference."""

from __future__ import annotations

import pytest
import torch

import tracer.prune as prune_mod
from tests.tracer.graph_fixtures import attribution_from_dense, random_attribution
from tracer.errors import ConfigError, GraphFileError
from tracer.layout import NodeKind, NodeLayout
from tracer.prune import (
    Edges,
    _drop_dangling,
    dag_depth,
    influence_series,
    node_influence,
    normalized,
    prune,
    to_networkx,
)
from tracer.schema import NodeRef, node_id


def dense_normalize(a: torch.Tensor) -> torch.Tensor:
    a = a.abs()
    return a / a.sum(1, keepdim=True).clamp_min(1e-10)


def dense_influence(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """wᵀ((I - Â)⁻¹ - I): the closed form of the Neumann series."""
    eye = torch.eye(len(a), dtype=torch.float64)
    return w @ (torch.linalg.inv(eye - dense_normalize(a)) - eye)


def dense_threshold(scores: torch.Tensor, frac: float) -> torch.Tensor:
    s = scores.sort(descending=True).values
    cum = s.cumsum(0) / s.sum()
    return s[min(int(torch.searchsorted(cum, torch.tensor([frac], dtype=cum.dtype))), len(s) - 1)]


def dense_prune(a: torch.Tensor, layout: NodeLayout, probs: torch.Tensor, nt: float, et: float):
    """circuit-tracer's prune_graph on a dense matrix (reference for the sparse implementation)."""
    w = torch.zeros(len(a), dtype=torch.float64)
    w[layout.logit_rows()] = probs.double()
    infl = dense_influence(a, w)
    keep = infl >= dense_threshold(infl, nt)
    always = layout.mask(NodeKind.EMBEDDING) | layout.mask(NodeKind.LOGIT)
    keep |= always
    p = a.clone()
    p[~keep] = 0
    p[:, ~keep] = 0
    scores = dense_normalize(p) * (dense_influence(p, w) + w)[:, None]
    # only real edges count (circuit-tracer's dense mask also marks non-edges when the cut lands on a zero score)
    edges = (scores >= dense_threshold(scores.flatten(), et)) & (p != 0)
    feat, needs_out = layout.mask(NodeKind.FEATURE), ~always
    old = ~keep
    while not torch.equal(old, keep):
        old = keep.clone()
        edges[~keep] = False
        edges[:, ~keep] = False
        keep[needs_out] &= edges.any(0)[needs_out]
        keep[feat] &= edges.any(1)[feat]
    return keep, edges & keep[:, None] & keep[None, :] & (a != 0)


def hand_graph(prob: float = 0.8):
    """4 features at (0, 0) feeding one logit with |weights| 5, 3, 1.5, 0.5 (normalised .5 .3 .15 .05), each fed by
    the token at position 0; the token at position 1 has no edges at all."""
    layout = NodeLayout(2, torch.tensor([7, 8]), torch.tensor([[0, 0, i] for i in range(4)]), torch.tensor([3]))
    a = torch.zeros(layout.n_nodes, layout.n_nodes, dtype=torch.float64)
    f, lg, emb = layout.feature_rows(), int(layout.logit_rows(0)), int(layout.embedding_rows(0))
    a[lg, f] = torch.tensor([5.0, -3.0, 1.5, 0.5], dtype=torch.float64)
    a[f, emb] = 1.0
    return attribution_from_dense(a, layout, torch.tensor([prob])), f, lg, emb


def test_influence_hand_computed():
    attr, f, lg, emb = hand_graph()
    w = torch.zeros(attr.layout.n_nodes, dtype=torch.float64)
    w[lg] = 0.8
    infl = node_influence(attr.adjacency, w)
    expected = torch.zeros_like(infl)
    expected[f] = 0.8 * torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    expected[emb] = 0.8  # through every feature, each with a single input
    torch.testing.assert_close(infl, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_influence_equals_dense_inverse(seed):
    attr = random_attribution(seed=seed, dtype=torch.float64)
    w = torch.zeros(attr.layout.n_nodes, dtype=torch.float64)
    w[attr.layout.logit_rows()] = attr.logit_probs.double()
    got = node_influence(attr.adjacency, w)
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, dense_influence(attr.adjacency.to_dense(), w), rtol=1e-10, atol=1e-12)


def test_cycle_is_rejected():
    a = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    with pytest.raises(GraphFileError, match="cycle"):
        node_influence(a.to_sparse_coo(), torch.tensor([1.0, 0.0, 0.0]))


@pytest.mark.parametrize(("node_threshold", "kept"), [(0.8, [0, 1]), (0.95, [0, 1, 2]), (0.5, [])])
def test_node_threshold_hand_computed(node_threshold, kept):
    # sorted influence: token .8 (cumulative .5), f0 .4 (.75), f1 .24 (.9), f2 .12 (.975), f3 .04 (1.0)
    attr, f, lg, emb = hand_graph()
    res = prune(attr, node_threshold=node_threshold, edge_threshold=1.0)
    assert res.node_mask[f].nonzero().flatten().tolist() == kept
    assert res.node_mask[attr.layout.mask(NodeKind.EMBEDDING)].all()  # incl. the token without edges
    assert res.node_mask[lg] and not res.node_mask[attr.layout.mask(NodeKind.ERROR)].any()
    cum = res.cumulative_influence
    torch.testing.assert_close(cum[[emb, *f.tolist()]], torch.tensor([0.5, 0.75, 0.9, 0.975, 1.0],
                                                                      dtype=torch.float64))  # fmt: skip


def test_edge_threshold_and_dangling_hand_computed():
    # kept f0, f1: Â'(logit) = .625, .375; I' = logit .8, f0 .5, f1 .3; scores .5 (logit<-f0), .3 (logit<-f1),
    # .5 (f0<-token), .3 (f1<-token): cumulative .3125 .625 .8125 1 -> 0.6 keeps the .5 pair, and f1 dangles.
    attr, f, lg, emb = hand_graph()
    res = prune(attr, node_threshold=0.8, edge_threshold=0.6)
    assert res.node_mask[f].tolist() == [True, False, False, False]
    adj = res.adjacency.to_dense()
    assert (adj != 0).sum() == 2 and adj[lg, f[0]] == 5.0 and adj[f[0], emb] == 1.0
    torch.testing.assert_close(res.edge_score.to_dense()[adj != 0], torch.tensor([0.5, 0.5], dtype=torch.float64))
    full = prune(attr, node_threshold=0.8, edge_threshold=0.98)
    assert full.node_mask[f].tolist() == [True, True, False, False] and full.n_edges == 4


def test_dangling_removal_iterates():
    layout = NodeLayout(2, torch.tensor([1]), torch.tensor([[0, 0, 0], [1, 0, 0], [0, 0, 1]]), torch.tensor([4]))
    fa, fb, fd = layout.feature_rows().tolist()
    lg, emb = int(layout.logit_rows(0)), int(layout.embedding_rows(0))
    # fa <- token, fb <- fa, logit <- fb (dropped), logit <- fd (fd has no input)
    rows, cols = torch.tensor([fa, fb, lg, lg]), torch.tensor([emb, fa, fb, fd])
    edges = Edges(rows, cols, torch.ones(4), layout.n_nodes)
    everything = torch.ones(layout.n_nodes, dtype=torch.bool)
    mask, keep = _drop_dangling(edges, torch.tensor([True, True, False, True]), everything, layout)
    assert not mask[[fa, fb, fd]].any()  # fb: no output; then fa: its only output went with fb; fd: no input
    assert mask[[lg, emb]].all() and not keep.any()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("nt", "et"), [(0.8, 0.98), (0.5, 0.9), (0.3, 0.7), (1.0, 1.0)])
def test_prune_matches_dense_circuit_tracer(seed, nt, et):
    attr = random_attribution(n_layers=3, n_pos=6, seed=seed, dtype=torch.float64)
    a = attr.adjacency.to_dense()
    keep, edges = dense_prune(a, attr.layout, attr.logit_probs, nt, et)
    res = prune(attr.adjacency, attr.layout, attr.logit_probs, node_threshold=nt, edge_threshold=et)
    assert torch.equal(res.node_mask, keep)
    got = res.adjacency.to_dense()
    assert torch.equal(got != 0, edges)
    torch.testing.assert_close(got[edges], a[edges], rtol=0, atol=0)
    torch.testing.assert_close(res.node_influence, dense_influence(a, _weights(attr)), rtol=1e-10, atol=1e-12)


def _weights(attr):
    w = torch.zeros(attr.layout.n_nodes, dtype=torch.float64)
    w[attr.layout.logit_rows()] = attr.logit_probs.double()
    return w


@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_graph_invariants(seed):
    attr = random_attribution(n_layers=4, n_pos=8, seed=seed)
    res = prune(attr)
    lay, m = attr.layout, res.node_mask
    assert m[lay.mask(NodeKind.EMBEDDING) | lay.mask(NodeKind.LOGIT)].all()
    rows, cols = res.adjacency.indices()
    assert m[rows].all() and m[cols].all()
    has_out = torch.zeros_like(m).index_fill_(0, cols, True)
    has_in = torch.zeros_like(m).index_fill_(0, rows, True)
    feat = lay.mask(NodeKind.FEATURE)
    assert has_out[m & (feat | lay.mask(NodeKind.ERROR))].all() and has_in[m & feat].all()
    assert res.n_nodes < lay.n_nodes and res.n_edges < attr.adjacency.nnz


def test_thresholds_validated():
    attr, *_ = hand_graph()
    with pytest.raises(ConfigError, match="node_threshold"):
        prune(attr, node_threshold=1.5)
    with pytest.raises(ConfigError, match="edge_threshold"):
        prune(attr, edge_threshold=-0.1)
    with pytest.raises(ConfigError, match="layout"):
        prune(attr.adjacency)


def test_to_networkx():
    attr = random_attribution(seed=3)
    res = prune(attr, node_threshold=0.9)
    g = to_networkx(attr, res)
    lay = attr.layout
    assert g.number_of_nodes() == res.n_nodes and g.number_of_edges() == res.n_edges
    frow = int(lay.feature_rows()[res.node_mask[lay.feature_rows()]][0])
    ref = lay.node(frow)
    node = g.nodes[node_id(ref)]
    assert node["kind"] == "feature" and node["activation"] == pytest.approx(float(attr.activations[frow]))
    assert g.nodes[node_id(NodeRef(NodeKind.EMBEDDING, -1, 1, int(lay.tokens[1])))]["token"] == "\n"
    lg = g.nodes[node_id(lay.node(int(lay.logit_rows(0))))]
    assert lg["probability"] == pytest.approx(float(attr.logit_probs[0])) and lg["token"] == " w0"
    (t, s), w = res.adjacency.indices()[:, 0].tolist(), float(res.adjacency.values()[0])
    assert g.edges[node_id(lay.node(s)), node_id(lay.node(t))]["weight"] == pytest.approx(w)


def chain_graph():
    """n_layers 3, one position: emb -> f0 (layer 0) -> f1 (1) -> f2 (2) -> logit, the longest path any graph of
    this layout can have (n_layers + 1 = 4 edges), plus shorter ones: emb -> f3 (0) -> logit, error@1 -> f2,
    emb -> logit."""
    feats = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 1]])
    layout = NodeLayout(3, torch.tensor([7]), feats, torch.tensor([3]))
    f, err1 = layout.feature_rows(), int(layout.error_rows(1, 0))
    emb, lg = int(layout.embedding_rows(0)), int(layout.logit_rows(0))
    a = torch.zeros(layout.n_nodes, layout.n_nodes, dtype=torch.float64)
    for t, s, v in ((lg, f[2], 2.0), (lg, f[3], -1.0), (lg, emb, 0.5), (f[2], f[1], 3.0), (f[2], err1, -1.0),
                    (f[1], f[0], 1.5), (f[0], emb, 2.0), (f[3], emb, 1.0)):  # fmt: skip
        a[t, s] = v
    w = torch.zeros(layout.n_nodes, dtype=torch.float64)
    w[lg] = 0.7
    return a, layout, w, f


def dense_truncated(a: torch.Tensor, w: torch.Tensor, steps: int) -> torch.Tensor:
    """wᵀ(Â + … + Â^steps) by dense matrix powers."""
    ahat, term, total = dense_normalize(a), w.clone(), torch.zeros_like(w)
    for _ in range(steps):
        term = term @ ahat
        total += term
    return total


def test_dag_depth_of_a_layered_graph():
    a, layout, _, f = chain_graph()
    edges = Edges.of(a.to_sparse_coo())
    assert dag_depth(edges, layout) == 4  # n_layers + 1
    assert dag_depth(Edges.of(torch.zeros_like(a)), layout) == 4  # no edges: still the layout's bound
    same_layer = a.clone()
    same_layer[f[3], f[0]] = 1.0  # both at layer 0
    assert dag_depth(Edges.of(same_layer.to_sparse_coo()), layout) is None
    backwards = a.clone()
    backwards[f[0], f[2]] = 1.0  # a layer-2 source feeding a layer-0 target
    assert dag_depth(Edges.of(backwards.to_sparse_coo()), layout) is None


def test_series_capped_at_dag_depth_is_the_whole_series():
    a, layout, w, _ = chain_graph()
    edges = Edges.of(a.to_sparse_coo())
    ahat = normalized(edges)
    four = dense_truncated(a, w, 4)
    assert not torch.allclose(dense_truncated(a, w, 3), four)  # the 4-edge path adds a 4th term
    torch.testing.assert_close(dense_truncated(a, w, 5), four, rtol=0, atol=0)  # and nothing longer exists
    torch.testing.assert_close(four, dense_influence(a, w), rtol=1e-12, atol=1e-15)
    capped = influence_series(edges, ahat, w, dag_depth(edges, layout))
    torch.testing.assert_close(capped, four, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(influence_series(edges, ahat, w), four, rtol=1e-12, atol=1e-15)
    # a cap below the longest path never returns the truncated series: a path longer than the cap means no DAG
    with pytest.raises(GraphFileError, match="after 3 steps"):
        influence_series(edges, ahat, w, 3)


def test_series_cap_bounds_the_work_on_a_cycle():
    a = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    edges = Edges.of(a.to_sparse_coo())
    w = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    with pytest.raises(GraphFileError, match="after 2 steps"):
        influence_series(edges, normalized(edges), w, 2)
    with pytest.raises(GraphFileError, match="after 4 steps"):  # never more than n_nodes, whatever the cap
        influence_series(edges, normalized(edges), w, 100)


def test_prune_caps_the_kept_series_at_the_layout_depth(monkeypatch):
    caps = []
    real = prune_mod.influence_series
    monkeypatch.setattr(prune_mod, "influence_series", lambda *a: caps.append(a[3]) or real(*a))
    a, layout, w, f = chain_graph()
    probs = torch.tensor([0.7], dtype=torch.float64)
    kept = prune(attribution_from_dense(a, layout, probs), node_threshold=1.0, edge_threshold=1.0)
    assert caps == [4] and kept.n_edges == 8
    want = dense_normalize(a) * (dense_influence(a, w) + w)[:, None]  # E[t, s] from the whole series
    torch.testing.assert_close(kept.edge_score.to_dense(), want, rtol=1e-12, atol=1e-15)
    a[f[3], f[0]] = 1.0  # a same-layer edge: no layer bound, the series falls back to n_nodes
    prune(attribution_from_dense(a, layout, probs), node_threshold=1.0, edge_threshold=1.0)
    assert caps == [4, None]
