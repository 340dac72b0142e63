"""Replacement and completeness scores: hand cases, and a dense closed-form reference on random graphs."""

from __future__ import annotations

import pytest
import torch

from tests.tracer.graph_fixtures import random_attribution
from tracer.layout import NodeKind, NodeLayout
from tracer.prune import prune
from tracer.scores import graph_scores


def small_graph(edges: dict[tuple[str, str], float]):
    """One layer, one position: feature f, error e (layer 0), token t, logit l (probability 1)."""
    layout = NodeLayout(1, torch.tensor([5]), torch.tensor([[0, 0, 9]]), torch.tensor([2]))
    row = {"f": int(layout.feature_rows()[0]), "e": int(layout.error_rows(0, 0)), "t": int(layout.embedding_rows(0)),
           "l": int(layout.logit_rows(0))}  # fmt: skip
    a = torch.zeros(layout.n_nodes, layout.n_nodes, dtype=torch.float64)
    for (target, source), w in edges.items():
        a[row[target], row[source]] = w
    return a.to_sparse_coo(), layout, torch.tensor([1.0]), row


def test_no_errors_scores_one():
    a, layout, p, _ = small_graph({("l", "f"): 2.0, ("f", "t"): -1.0, ("l", "t"): 0.5})
    s = graph_scores(a, layout, p)
    assert s.replacement == 1.0 and s.completeness == 1.0


def test_known_fractions():
    # Â(logit) = f .75, e .25; I: f .75, e .25, t .75 -> replacement .75;
    # completeness: logit (1-.25)·1, f 1·.75, e 1·.25, t 1·.75 over 1+.75+.25+.75 = 2.5 / 2.75
    a, layout, p, _ = small_graph({("l", "f"): 3.0, ("l", "e"): -1.0, ("f", "t"): 1.0})
    s = graph_scores(a, layout, p)
    assert s.replacement == pytest.approx(0.75, abs=1e-12)
    assert s.completeness == pytest.approx(2.5 / 2.75, abs=1e-12)


def test_removed_feature_folds_into_its_error():
    a, layout, p, row = small_graph({("l", "f"): 3.0, ("l", "e"): 1.0, ("f", "t"): 1.0})
    keep = torch.ones(layout.n_nodes, dtype=torch.bool)
    keep[row["f"]] = False
    # logit <- e now carries 4 and is the logit's only input: no token influence, logit fully from errors
    s = graph_scores(a, layout, p, keep_mask=keep)
    assert s.replacement == 0.0 and s.completeness == pytest.approx(0.5, abs=1e-12)


def test_folding_is_signed():
    # f and e cancel once merged, so the logit reads only the token
    a, layout, p, row = small_graph({("l", "f"): -1.0, ("l", "e"): 1.0, ("l", "t"): 2.0, ("f", "t"): 1.0})
    keep = torch.ones(layout.n_nodes, dtype=torch.bool)
    keep[row["f"]] = False
    assert graph_scores(a, layout, p).replacement < 1.0
    s = graph_scores(a, layout, p, keep_mask=keep)
    assert s.replacement == pytest.approx(1.0) and s.completeness == pytest.approx(1.0)


def dense_scores(a: torch.Tensor, layout: NodeLayout, probs: torch.Tensor) -> tuple[float, float]:
    ahat = a.abs() / a.abs().sum(1, keepdim=True).clamp_min(1e-10)
    eye = torch.eye(len(a), dtype=torch.float64)
    w = torch.zeros(len(a), dtype=torch.float64)
    w[layout.logit_rows()] = probs.double()
    infl = w @ (torch.linalg.inv(eye - ahat) - eye)
    tok, err = infl[layout.mask(NodeKind.EMBEDDING)].sum(), infl[layout.mask(NodeKind.ERROR)].sum()
    comp = ((1 - ahat[:, layout.mask(NodeKind.ERROR)].sum(1)) * (infl + w)).sum() / (infl + w).sum()
    return float(tok / (tok + err)), float(comp)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_dense_reference(seed):
    attr = random_attribution(seed=seed, dtype=torch.float64)
    s = graph_scores(attr.adjacency, attr.layout, attr.logit_probs)
    ref = dense_scores(attr.adjacency.to_dense(), attr.layout, attr.logit_probs)
    assert (s.replacement, s.completeness) == pytest.approx(ref, abs=1e-10)
    assert 0 < s.replacement < 1 and 0 < s.completeness < 1


@pytest.mark.parametrize("seed", [0, 1])
def test_subset_matches_dense_fold(seed):
    attr = random_attribution(seed=seed, dtype=torch.float64)
    lay = attr.layout
    keep = prune(attr, node_threshold=0.6).node_mask
    assert (~keep & lay.mask(NodeKind.FEATURE)).any()
    a = attr.adjacency.to_dense().clone()
    for row in (~keep & lay.mask(NodeKind.FEATURE)).nonzero().flatten().tolist():
        ref = lay.node(row)
        err = int(lay.error_rows(ref.layer, ref.pos))
        a[:, err] += a[:, row]
        a[:, row] = 0
        a[row, :] = 0
    s = graph_scores(attr.adjacency, lay, attr.logit_probs, keep_mask=keep)
    assert (s.replacement, s.completeness) == pytest.approx(dense_scores(a, lay, attr.logit_probs), abs=1e-10)
    full = graph_scores(attr.adjacency, lay, attr.logit_probs, keep_mask=torch.ones(lay.n_nodes, dtype=torch.bool))
    assert full == graph_scores(attr.adjacency, lay, attr.logit_probs)
