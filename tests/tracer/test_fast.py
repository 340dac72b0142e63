"""The bf16 fast path (`--dtype bf16`): rows close to the exact fp32 rows, stored in the record's dtype, and the
fp32 default untouched (its exactness is tests/tracer/test_attribution.py's)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_model, tiny_config
from tests.tracer.test_attribution import CFG, TOKENS, random_transcoder
from tracer.attribute import TraceConfig, attribute
from tracer.errors import ConfigError
from tracer.fast import shadow_model
from tracer.models import HookPoint
from transcoders import TranscoderKind


@pytest.mark.parametrize(("style", "kind", "hook"), [("gpt2", TranscoderKind.CLT, HookPoint.MLP_IN),
                                                     ("llama", TranscoderKind.PLT, HookPoint.RESID_MID)])
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


def test_shadow_shares_big_parts_and_leaves_the_model_alone():
    model = random_model(tiny_config("gpt2")).float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shadow = shadow_model(model, torch.bfloat16)
    assert shadow.embed is model.embed and shadow.block(0).mlp is model.block(0).mlp
    assert shadow.block(0).attn.o.weight.dtype == torch.bfloat16 and shadow.ln_f.weight.dtype == torch.bfloat16
    assert all(torch.equal(v, model.state_dict()[k]) and v.dtype == model.state_dict()[k].dtype
               for k, v in before.items())  # fmt: skip


def test_unknown_row_dtype():
    with pytest.raises(ConfigError, match="row dtype"):
        TraceConfig(row_dtype="fp8")
