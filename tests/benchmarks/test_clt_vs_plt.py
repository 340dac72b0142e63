"""benchmarks/clt_vs_plt.py's measures on a hand-made graph: path lengths by hand, the size search against the
completeness it searches on."""

from __future__ import annotations

import pytest
import torch

from benchmarks.clt_vs_plt import path_lengths, size_at
from tracer.csr import CsrAdjacency
from tracer.layout import NodeLayout
from tracer.result import Attribution
from tracer.scores import graph_scores


def tiny(error_weight: float) -> Attribution:
    """One layer, prompt [BOS, t], one feature at position 1, one logit:
    logit <- feature 1, logit <- embedding(1) 1, logit <- error(0, 1) error_weight; feature <- embedding(1) 2."""
    lay = NodeLayout(1, torch.tensor([0, 5]), torch.tensor([[0, 1, 0]]), torch.tensor([7]))
    feat, err = int(lay.feature_rows()[0]), int(lay.error_rows(0, 1))
    emb, logit = int(lay.embedding_rows(1)), int(lay.logit_rows()[0])
    a = torch.zeros(lay.n_nodes, lay.n_nodes)
    a[logit, feat], a[logit, emb], a[logit, err], a[feat, emb] = 1.0, 1.0, error_weight, 2.0
    return Attribution(layout=lay, adjacency=CsrAdjacency.of(a), activations=torch.ones(1), logit_probs=torch.ones(1),
                       error_norms=torch.ones(1, 2), token_strs=["<bos>", "t"], logit_strs=["x"])  # fmt: skip


def test_path_lengths_by_hand():
    # no error: half the mass lands on the embedding in 1 step, half via the feature in 2 -> 1.5
    assert path_lengths(tiny(0.0)) == pytest.approx((1.5, 1.5))
    # error edge 2 of 4: 0.25 (emb) + 0.5 (error) land at step 1, 0.25 at step 2; token mass 0.25 + 0.25
    assert path_lengths(tiny(2.0)) == pytest.approx((1.25, 1.5))


def test_size_search_matches_completeness():
    attr = tiny(2.0)
    keep_none = torch.ones(attr.layout.n_nodes, dtype=torch.bool)
    keep_none[attr.layout.feature_rows()] = False
    c0 = graph_scores(attr.adjacency, attr.layout, attr.logit_probs, keep_mask=keep_none).completeness
    c1 = graph_scores(attr.adjacency, attr.layout, attr.logit_probs).completeness
    assert c0 < c1
    assert size_at(attr, c0) == (0, True)
    assert size_at(attr, (c0 + c1) / 2) == (1, True)
    assert size_at(attr, min(1.0, c1 + 1e-3)) == (1, False)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from benchmarks.clt_vs_plt import main

    assert main(["--plt", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["--plt", str(tmp_path), "--completeness", "2"])
    assert e.value.code == 2
