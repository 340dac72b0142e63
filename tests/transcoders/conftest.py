"""Tiny random transcoders for the transcoder tests."""

from __future__ import annotations

import torch

from tracer.models import HookPoint
from transcoders import ActivationKind, Transcoder, TranscoderConfig, TranscoderKind


def random_transcoder(kind: TranscoderKind = TranscoderKind.CLT, activation: ActivationKind = ActivationKind.JUMPRELU,
                      skip: bool = True, n_layers: int = 3, d_model: int = 16, n_features: int = 12, seed: int = 0,
                      input_hook: HookPoint = HookPoint.MLP_IN, dtype: str = "float32") -> Transcoder:  # fmt: skip
    cfg = TranscoderConfig(kind=kind, n_layers=n_layers, d_model=d_model, n_features=n_features, activation=activation,
                           topk_k=3 if activation == ActivationKind.TOPK else 0, skip=skip, input_hook=input_hook,
                           model_name="tiny", model_hash="abc", dtype=dtype)  # type: ignore[arg-type]  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    tc = Transcoder(cfg)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if tc.theta is not None:
            tc.theta.copy_(torch.rand(tc.theta.shape, generator=g) * 0.3)
    return tc.requires_grad_(False)
