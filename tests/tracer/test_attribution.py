"""Every edge of the attribution graph equals the effect of perturbing its source in the replacement model.

The reference is independent of tracer.backward: it runs the real runtime with frozen patterns and norm scales
(tracer.record.frozen_forward), perturbs one source (double a feature's activation, add an error vector, add a
token embedding), and reads every target's pre-activation / demeaned logit. The replacement model is linear in
its sources, so each change must equal the adjacency column exactly (fp64, 1e-8).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_model, tiny_config
from tracer.attribute import TraceConfig, attribute
from tracer.layout import NodeKind
from tracer.models import HookPoint, Site
from tracer.record import frozen_forward, record
from tracer.targets import select_targets
from transcoders import ActivationKind, Transcoder, TranscoderConfig, TranscoderKind

TOKENS = torch.tensor([1, 5, 9, 3, 7, 11, 5])
CFG = TraceConfig(batch_size=5, max_n_logits=3, desired_logit_prob=0.99)


def random_transcoder(model, kind, hook, skip, activation=ActivationKind.RELU, seed=1) -> Transcoder:
    cfg = TranscoderConfig(kind=kind, n_layers=model.cfg.n_layers, d_model=model.cfg.d_model, n_features=6,
                           activation=activation, input_hook=hook, skip=skip)  # fmt: skip
    torch.manual_seed(seed)
    tc = Transcoder(cfg).double()
    with torch.no_grad():
        for name, p in tc.named_parameters():
            p.copy_(0.3 * torch.rand_like(p) if name == "theta" else 0.3 * torch.randn_like(p))
    return tc.requires_grad_(False)


def target_values(model, tc, rec, layout, directions, acts, errors, embed_delta=None):
    """[n_nodes] pre-activation of every feature and demeaned logit of every logit target (0 elsewhere)."""
    hooks = {}
    if embed_delta is not None:
        hooks[Site(HookPoint.EMBED)] = lambda x: x + embed_delta[None]
    with frozen_forward(model, tc, rec, acts, errors) as inputs, model.hooks.attached(hooks), \
            model.hooks.capture([Site(HookPoint.FINAL)]) as cache:  # fmt: skip
        model(rec.tokens[None])
    out = torch.zeros(layout.n_nodes, dtype=rec.mlp_out.dtype)
    f = layout.features
    x = torch.stack([inputs[int(layer)][int(pos)] for layer, pos in f[:, :2]]) if len(f) else torch.zeros(0, 1)
    if len(f):
        out[layout.feature_rows()] = (tc.W_enc[f[:, 0], f[:, 2]] * x).sum(-1)
    out[layout.logit_rows()] = directions @ cache[Site(HookPoint.FINAL)][0, -1]
    return out


def perturbation_matrix(model, tc, attr, tokens=TOKENS, cfg=CFG, tok=None, columns=None, directions=None):
    """Column s = change of all targets when source s is added once more (all columns, or the given ones); the logit
    targets' read-out `directions` [K, D] (default: the top logits' demeaned unembedding rows, as cfg selects them)."""
    layout = attr.layout
    rec = record(model, tc, tokens)
    if directions is None:
        directions = select_targets(rec.logits[-1], model.unembed.weight, tok, cfg.max_n_logits,
                                    cfg.desired_logit_prob).directions  # fmt: skip
    base = target_values(model, tc, rec, layout, directions, rec.acts, rec.errors)
    expected = torch.zeros(layout.n_nodes, layout.n_nodes, dtype=base.dtype)
    for row in range(layout.n_nodes) if columns is None else columns:
        ref = layout.node(row)
        acts, errors, delta = rec.acts.clone(), rec.errors.clone(), None
        if ref.kind == NodeKind.FEATURE:
            acts[ref.pos, ref.layer, ref.index] *= 2
        elif ref.kind == NodeKind.ERROR:
            if ref.pos == 0:
                continue  # BOS errors are constants
            errors[ref.pos, ref.layer] *= 2
        elif ref.kind == NodeKind.EMBEDDING:
            delta = torch.zeros(rec.n_pos, model.cfg.d_model, dtype=rec.mlp_out.dtype)
            delta[ref.pos] = model.embed_tokens(torch.tensor(ref.index))
        else:
            continue
        expected[:, row] = target_values(model, tc, rec, layout, directions, acts, errors, delta) - base
    return expected


CASES = [
    ("gpt2", TranscoderKind.CLT, HookPoint.MLP_IN, False),
    ("llama", TranscoderKind.CLT, HookPoint.MLP_IN, True),
    ("gpt2", TranscoderKind.PLT, HookPoint.RESID_MID, True),
    ("llama", TranscoderKind.PLT, HookPoint.MLP_IN, False),
    ("llama", TranscoderKind.CLT, HookPoint.RESID_MID, False),
    ("gpt2", TranscoderKind.CLT, HookPoint.LN2_NORMALIZED, True),
    ("llama", TranscoderKind.PLT, HookPoint.LN2_NORMALIZED, False),
    ("gemma2", TranscoderKind.CLT, HookPoint.LN2_NORMALIZED, True),
    ("gemma2", TranscoderKind.PLT, HookPoint.MLP_IN, False),
    ("gemma3", TranscoderKind.PLT, HookPoint.LN2_NORMALIZED, True),
    ("gemma3", TranscoderKind.CLT, HookPoint.RESID_MID, False),
]


def assert_exact(model, tc, attr):
    A = attr.adjacency.to_dense()
    expected = perturbation_matrix(model, tc, attr)
    target_rows = attr.layout.mask(NodeKind.FEATURE) | attr.layout.mask(NodeKind.LOGIT)
    torch.testing.assert_close(A[target_rows], expected[target_rows], atol=1e-8, rtol=0)
    assert A[~target_rows].abs().sum() == 0  # errors and tokens have no inputs
    assert A[:, attr.layout.mask(NodeKind.LOGIT)].abs().sum() == 0  # logits have no outputs
    assert (expected[target_rows] != 0).sum() > 100  # the comparison is not vacuous


@pytest.mark.parametrize(("style", "kind", "hook", "skip"), CASES)
def test_every_edge_matches_perturbation(style, kind, hook, skip):
    model = random_model(tiny_config(style))
    tc = random_transcoder(model, kind, hook, skip)
    attr = attribute(model, tc, TOKENS, None, CFG)
    assert attr.layout.count(NodeKind.FEATURE) > 10  # enough active features to mean something
    assert attr.stats["replacement_max_abs_logit_error"] < 1e-10
    assert_exact(model, tc, attr)


def test_jumprelu_features_and_bos_excluded():
    model = random_model(tiny_config("llama"))
    tc = random_transcoder(model, TranscoderKind.CLT, HookPoint.MLP_IN, False, ActivationKind.JUMPRELU)
    attr = attribute(model, tc, TOKENS, None, CFG)
    assert (attr.layout.features[:, 1] > 0).all()  # no BOS features
    assert (attr.activations != 0).all()
    assert_exact(model, tc, attr)


def test_max_feature_nodes_and_topk_keep_subset_of_exact_rows():
    model = random_model(tiny_config("gpt2"))
    tc = random_transcoder(model, TranscoderKind.CLT, HookPoint.MLP_IN, False)
    full = attribute(model, tc, TOKENS, None, TraceConfig(max_n_logits=2)).adjacency.to_dense()
    part = attribute(model, tc, TOKENS, None, TraceConfig(max_n_logits=2, max_feature_nodes=7, batch_size=3))
    A = part.adjacency.to_dense()
    with_rows = A.abs().sum(1) > 0
    assert int(with_rows[part.layout.feature_rows()].sum()) <= 7
    torch.testing.assert_close(A[with_rows], full[with_rows], atol=1e-12, rtol=0)
    top = attribute(model, tc, TOKENS, None, TraceConfig(max_n_logits=2, edge_topk=4))
    T = top.adjacency.to_dense()
    assert ((T != 0).sum(1) <= 4).all()
    kept = T != 0
    torch.testing.assert_close(T[kept], full[kept], atol=1e-12, rtol=0)
    assert top.row_mass_kept is not None and (top.row_mass_kept <= 1 + 1e-9).all()


@pytest.mark.parametrize("row_dtype", ["fp32", "bf16"])
def test_rows_over_the_readable_columns_equal_full_rows(monkeypatch, row_dtype):
    """A batch's rows span only the features at its positions (NodeLayout.source_block, the kernel writing into
    them): the same CSR, bit for bit, as rows over every column (the layout's fallback for unsorted features)."""
    from tracer.layout import NodeLayout

    model = random_model(tiny_config("llama"))
    tc = random_transcoder(model, TranscoderKind.CLT, HookPoint.MLP_IN, True)
    cfg = TraceConfig(batch_size=5, row_dtype=row_dtype)
    narrow = attribute(model, tc, TOKENS, None, cfg)
    lay = narrow.layout
    assert any(lay.source_block(p).gap > 0 for p in range(1, lay.n_pos))  # the blocks do leave columns out
    monkeypatch.setattr(NodeLayout, "_sorted_positions", property(lambda self: None))
    full = attribute(model, tc, TOKENS, None, cfg)
    assert full.layout.source_block(1).gap == 0
    for name in ("crow", "col", "values"):
        assert torch.equal(getattr(narrow.adjacency, name), getattr(full.adjacency, name))
