"""Layer subsets (`--layers 0-3,7`): train or evaluate the transcoders of some layers only.

1. Parse: a spec of comma-separated layers and inclusive ranges -> sorted unique layer indices, validated against
   the model's layer count (one ConfigError line otherwise).
2. Embed: a transcoder trained on the subset's activations only (its layer i = model layer layers[i]) becomes a
   full-size set whose absent layers have all-zero weights and `cfg.layers` naming the present ones. A zero layer
   has no active feature (pre-activation 0, threshold 0) and reconstructs 0, so a trace puts its whole MLP output
   in the error node: exact. For a CLT, feature i -> output j (j ≥ i) of the subset becomes layers[i] -> layers[j].
"""

from __future__ import annotations

import re

import torch

from tracer.errors import ConfigError
from transcoders.clt import Transcoder
from transcoders.config import TranscoderConfig

_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


# 1. Parse
def parse_layers(spec: str, n_layers: int) -> tuple[int, ...]:
    """'0-3,7' -> (0, 1, 2, 3, 7); empty, garbled, reversed or out-of-range specs are one ConfigError line."""
    out: set[int] = set()
    for part in spec.split(","):
        m = _PART.match(part)
        if m is None:
            raise ConfigError(f"--layers {spec!r}: expected layers and ranges like 0-3,7, not {part.strip()!r}")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if lo > hi:
            raise ConfigError(f"--layers {spec!r}: range {lo}-{hi} is reversed")
        if hi >= n_layers:
            raise ConfigError(f"--layers {spec!r}: layer {hi} does not exist (the model has layers 0-{n_layers - 1})")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def present(cfg: TranscoderConfig) -> tuple[int, ...]:
    """Layers of a set that have transcoders."""
    return cfg.layers if cfg.layers is not None else tuple(range(cfg.n_layers))


# 2. Embed
@torch.no_grad()
def embed(sub: Transcoder, layers: tuple[int, ...], n_layers: int) -> Transcoder:
    """A set trained on `layers` only [len(layers) layers] -> the model-size set (absent layers zero)."""
    if len(layers) != sub.cfg.n_layers:
        raise ValueError(f"{len(layers)} layers for a transcoder of {sub.cfg.n_layers}")
    cfg = sub.cfg.model_copy(update={"n_layers": n_layers, "layers": layers})
    full = Transcoder(TranscoderConfig.model_validate(cfg.model_dump())).requires_grad_(False)
    idx = torch.tensor(layers)
    full.W_enc[idx], full.b_enc[idx], full.b_dec[idx] = sub.W_enc, sub.b_enc, sub.b_dec
    if full.theta is not None and sub.theta is not None:
        full.theta[idx] = sub.theta
    if full.W_skip is not None and sub.W_skip is not None:
        full.W_skip[idx] = sub.W_skip
    for i, s in enumerate(layers):
        w = sub.decoder(i)  # [F, n_out_sub, D]; slice k writes to subset layer i + k
        for k in range(w.shape[1]):
            full.decoder(s)[:, layers[i + k] - s] = w[:, k]
    return full
