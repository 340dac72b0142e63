"""The bf16 fast path (`--dtype bf16`): rows close to the exact fp32 rows, stored in the record's dtype, and the
fp32 default untouched (its exactness is tests/tracer/test_attribution.py's)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_model, tiny_config
from tests.tracer.test_attribution import CFG, TOKENS, random_transcoder
from tracer.attribute import TraceConfig, attribute
from tracer.errors import ConfigError
from tracer.models import HookPoint
from transcoders import TranscoderKind


@pytest.mark.parametrize(("style", "kind", "hook"), [("gpt2", TranscoderKind.CLT, HookPoint.MLP_IN),
                                                     ("llama", TranscoderKind.PLT, HookPoint.RESID_MID),
                                                     ("gemma2", TranscoderKind.CLT, HookPoint.LN2_NORMALIZED)])
def test_bf16_rows_are_close_to_fp32(style, kind, hook):
    model = random_model(tiny_config(style)).float()
    tc = random_transcoder(model, kind, hook, True).float()
    exact = attribute(model, tc, TOKENS, None, CFG)
    fast = attribute(model, tc, TOKENS, None, TraceConfig(**{**CFG.__dict__, "row_dtype": "bf16"}))
    a, b = exact.adjacency.to_dense(), fast.adjacency.to_dense()
    assert fast.adjacency.values.dtype == torch.float32  # stored widened
    assert (a != 0).sum() > 100
    rel = float((a - b).norm() / a.norm())
    assert 0 < rel < 2e-2  # bf16 has 8 significant bits: ~0.4% per rounding, a few roundings deep
    assert float((a - b).abs().max() / a.abs().max()) < 3e-2
    assert fast.stats["replacement_max_abs_logit_error"] == exact.stats["replacement_max_abs_logit_error"]


def test_unknown_row_dtype():
    with pytest.raises(ConfigError, match="row dtype"):
        TraceConfig(row_dtype="fp8")


def test_reused_gradient_buffer_keeps_its_strides_and_error_edges_match_einsum():
    """Every batch's gradients are a view of one buffer with the same strides (oneDNN compiles a bf16 kernel per
    strides), with the values of a fresh run; error_edges equals the einsum it replaced on such a strided view."""
    from tracer.attribute import error_edges
    from tracer.backward import Injections, ReplacementBackward
    from tracer.record import record

    model = random_model(tiny_config("gpt2")).float()
    tc = random_transcoder(model, TranscoderKind.CLT, HookPoint.MLP_IN, True).float()
    rec = record(model, tc, TOKENS).upcast()
    reused, fresh = (ReplacementBackward(model, tc, rec, reuse_out=r) for r in (True, False))
    g, d = torch.Generator().manual_seed(0), model.cfg.d_model
    strides = set()
    for layer, pos, n in ((2, 3, 4), (0, 5, 2), (1, 1, 3)):
        inj = Injections(torch.full((n,), layer), torch.full((n,), pos), torch.randn(n, d, generator=g))
        a, b = reused.run(inj).mlp_out_BPLD, fresh.run(inj).mlp_out_BPLD
        # layers below the target's only: a feature target reads its layer's MLP input, before that layer's output
        assert a.shape == b.shape == (n, pos + 1, layer, d) and torch.equal(a, b)
        strides.add(a.stride())
        err_PLD = torch.randn(pos + 1, layer, d, generator=g, dtype=a.dtype)
        want = torch.einsum("bpld,pld->blp", a, err_PLD)
        torch.testing.assert_close(error_edges(a, err_PLD), want, rtol=1e-5, atol=1e-6)
    assert len(strides) == 1
    L = model.cfg.n_layers  # a logit target reads after the last MLP: every layer is returned
    logit = Injections(torch.tensor([L, 1]), torch.tensor([4, 2]), torch.randn(2, d, generator=g))
    assert reused.run(logit).mlp_out_BPLD.shape == (2, 5, L, d)
