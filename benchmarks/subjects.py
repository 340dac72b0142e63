"""Benchmark subjects: the bundled default model + CLT, and the synthetic 'anchor' subject shaped like the one
circuit-tracer 0.5.0 was measured on here (4-layer d256 GPT-2, CLT of 2,048 features per layer, ~100 active
features per token), with random weights and JumpReLU thresholds calibrated to that sparsity; 'wide' is the same
at d_model 1024 (16 heads, CLT of 4,096 features per layer): matmuls nearer a real model's size."""

from __future__ import annotations

import torch

from tracer.models import MlpKind, ModelConfig, NormKind, PosKind, Transformer
from transcoders import ActivationKind, Transcoder, TranscoderConfig, TranscoderKind

ANCHOR_ACTIVE_PER_TOKEN = 100


def anchor_subject(n_ctx: int = 1024, seed: int = 0, d_model: int = 256, n_features: int = 2048,
                   ) -> tuple[Transformer, Transcoder]:  # fmt: skip
    """The anchor subject (d_model 256; weights scaled by 1/sqrt(d_model / 256) at other widths, so activations
    keep their size); wide_subject is d_model 1024."""
    torch.manual_seed(seed)
    cfg = ModelConfig(family="gpt2", n_layers=4, d_model=d_model, n_heads=d_model // 64, d_mlp=4 * d_model,
                      vocab_size=4096, n_ctx=n_ctx, norm=NormKind.LAYERNORM, mlp=MlpKind.GELU, pos=PosKind.LEARNED,
                      qkv_bias=True, o_bias=True, mlp_bias=True, bos_token_id=0)  # fmt: skip
    model = Transformer(cfg)
    scale = (256 / d_model) ** 0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" not in name:
                p.normal_(0, 0.05 * scale)
    model.requires_grad_(False).eval()
    tcfg = TranscoderConfig(kind=TranscoderKind.CLT, n_layers=4, d_model=d_model, n_features=n_features,
                            activation=ActivationKind.JUMPRELU)  # fmt: skip
    tc = Transcoder(tcfg)
    with torch.no_grad():
        for name, p in tc.named_parameters():
            if name != "theta":
                p.normal_(0, 0.02 * scale)
        _calibrate(model, tc, ANCHOR_ACTIVE_PER_TOKEN / (4 * n_features))
    return model, tc.requires_grad_(False)


def wide_subject(n_ctx: int = 1024, seed: int = 0) -> tuple[Transformer, Transcoder]:
    return anchor_subject(n_ctx, seed, d_model=1024, n_features=4096)


def _calibrate(model: Transformer, tc: Transcoder, rate: float) -> None:
    """Set each feature's threshold at the (1 - rate) quantile of its pre-activation on random prompts."""
    from tracer.record import record

    gen = torch.Generator().manual_seed(1)
    pres = []
    for n in [16, 64, 128] * 8:  # many prompts: pre-activations vary per prompt as much as per position
        tokens = torch.randint(1, model.cfg.vocab_size, (n,), generator=gen)
        tokens[0] = 0
        pres.append(tc.pre_activations(record(model, tc, tokens).tc_input)[1:])  # [P, L, F]
    pre = torch.cat(pres)
    assert tc.theta is not None
    tc.theta.copy_(pre.quantile(1 - rate, dim=0))


def default_subject() -> tuple[Transformer, Transcoder] | None:
    from tracer.models import DEFAULT_MODEL, load_model
    from transcoders import DEFAULT_TRANSCODERS, load_transcoders

    if not (DEFAULT_MODEL / "config.json").exists() or not DEFAULT_TRANSCODERS.exists():
        return None
    lm = load_model()
    return lm.model, load_transcoders(DEFAULT_TRANSCODERS, lm.cfg, dtype=torch.float32)


SUBJECTS = {"anchor": anchor_subject, "wide": wide_subject, "default": default_subject}  # --subject choices
