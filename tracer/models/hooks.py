"""Named hook points of the runtime and the context managers that use them.

1. Every forward pass calls `HookRegistry.apply(point, layer, value)` at each named point.
2. `registry.attached(fns)` installs functions for some sites for the duration of a `with` block and always removes
   them, even on error; a function returns None (observe) or a tensor (replace the value).
3. `registry.capture(sites)` is `attached` with functions that store the values in a dict it yields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from typing import NamedTuple

import torch


class HookPoint(str, Enum):
    """Named places in the forward pass. Shapes: B batch, P positions, D d_model, H heads."""

    EMBED = "embed"  # token embeddings W_E[tokens] * embed_scale [B, P, D] (global: layer ignored)
    RESID_PRE = "resid_pre"  # block input [B, P, D]
    LN1_SCALE = "ln1_scale"  # attention-norm denominator [B, P, 1]
    ATTN_PATTERN = "attn_pattern"  # softmax attention weights [B, H, P, P]
    ATTN_POST_SCALE = "attn_post_scale"  # post-attention-norm denominator [B, P, 1] (models with post_norms only)
    ATTN_OUT = "attn_out"  # attention output incl. bias (and post-norm) as added to the residual [B, P, D]
    RESID_MID = "resid_mid"  # residual after attention, before the MLP's norm [B, P, D]
    LN2_SCALE = "ln2_scale"  # MLP-norm denominator [B, P, 1]
    LN2_NORMALIZED = "ln2_normalized"  # MLP input normalised, BEFORE the norm's weight and bias [B, P, D]
    MLP_IN = "mlp_in"  # normalised MLP input (after the norm's weight and bias) [B, P, D]
    MLP_OUT = "mlp_out"  # MLP output incl. its bias (and post-norm) as added to the residual [B, P, D]
    RESID_POST = "resid_post"  # block output [B, P, D]
    LNF_SCALE = "lnf_scale"  # final-norm denominator [B, P, 1] (global)
    FINAL = "final"  # normalised final residual, input of the unembedding [B, P, D] (global)
    LOGITS = "logits"  # [B, P, vocab] (global)


GLOBAL_POINTS = frozenset({HookPoint.EMBED, HookPoint.LNF_SCALE, HookPoint.FINAL, HookPoint.LOGITS})
POST_NORM_POINTS = frozenset({HookPoint.ATTN_POST_SCALE})  # called only by models with post_norms


class Site(NamedTuple):
    """A hook point at one layer (layer is 0 for global points)."""

    point: HookPoint
    layer: int = 0


HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


class HookRegistry:
    """Holds the functions active at each site; only the context managers below change it."""

    def __init__(self) -> None:
        self._fns: dict[Site, list[HookFn]] = {}

    def apply(self, point: HookPoint, layer: int, value: torch.Tensor) -> torch.Tensor:
        for fn in self._fns.get(Site(point, 0 if point in GLOBAL_POINTS else layer), ()):
            out = fn(value)
            if out is not None:
                value = out
        return value

    @contextmanager
    def attached(self, fns: Mapping[Site, HookFn]) -> Iterator[None]:
        added: list[tuple[Site, HookFn]] = []
        try:
            for site, fn in fns.items():
                self._fns.setdefault(Site(*site), []).append(fn)
                added.append((Site(*site), fn))
            yield
        finally:
            for site, fn in added:
                self._fns[site].remove(fn)
                if not self._fns[site]:
                    del self._fns[site]

    @contextmanager
    def capture(self, sites: Iterable[Site]) -> Iterator[dict[Site, torch.Tensor]]:
        cache: dict[Site, torch.Tensor] = {}

        def store(site: Site) -> HookFn:
            def fn(value: torch.Tensor) -> None:
                cache[site] = value

            return fn

        with self.attached({Site(*s): store(Site(*s)) for s in sites}):
            yield cache

    @property
    def active(self) -> bool:
        return bool(self._fns)


def all_sites(n_layers: int, post_norms: bool = False) -> list[Site]:
    """Every site a model with n_layers blocks calls (post-norm points only if it has post_norms)."""
    layered = [p for p in HookPoint if p not in GLOBAL_POINTS and (post_norms or p not in POST_NORM_POINTS)]
    return [Site(p) for p in HookPoint if p in GLOBAL_POINTS] + [
        Site(p, layer) for layer in range(n_layers) for p in layered
    ]
