"""The shipped default model and CLT: attribution on a planted prompt is exact (sampled edges, fp32) and tells
the truth about the planted fact."""

from __future__ import annotations

import pytest
import torch

from tests.tracer.test_attribution import perturbation_matrix
from tracer.attribute import TraceConfig, attribute
from tracer.layout import NodeKind
from tracer.models import load_model
from transcoders import DEFAULT_TRANSCODERS, load_transcoders


@pytest.fixture(scope="module")
def traced():
    lm = load_model()
    tc = load_transcoders(DEFAULT_TRANSCODERS, lm.cfg, dtype=torch.float32)
    assert lm.tokenizer is not None
    tokens = torch.tensor(lm.tokenizer.encode_prompt("The capital of France is", lm.cfg.n_ctx, lm.cfg.bos_token_id))
    cfg = TraceConfig(max_n_logits=3)
    return lm, tc, tokens, cfg, attribute(lm.model, tc, tokens, lm.tokenizer, cfg)


def test_top_logit_is_the_planted_answer(traced):
    lm, _, _, _, attr = traced
    assert attr.logit_strs[0] == " Paris"
    assert attr.stats["replacement_max_abs_logit_error"] < 1e-4


def test_sampled_edges_match_perturbation(traced):
    lm, tc, tokens, cfg, attr = traced
    layout = attr.layout
    g = torch.Generator().manual_seed(0)
    feats = layout.feature_rows()[torch.randperm(layout.count(NodeKind.FEATURE), generator=g)[:12]]
    errs = layout.error_rows(torch.tensor([0, 1, 2]), torch.tensor([2, 3, len(tokens) - 1]))
    cols = [*feats.tolist(), *errs.tolist(), *layout.embedding_rows(torch.arange(1, len(tokens))).tolist()]
    expected = perturbation_matrix(lm.model, tc, attr, tokens, cfg, lm.tokenizer, cols)
    A = attr.adjacency.to_dense()
    rows = layout.mask(NodeKind.FEATURE) | layout.mask(NodeKind.LOGIT)
    got, want = A[rows][:, cols], expected[rows][:, cols]
    assert want.abs().max() > 0
    assert ((got - want).abs().max() / want.abs().max()) <= 1e-4
