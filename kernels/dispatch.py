"""Backend selection for edge attribution.

1. Resolve: an explicit `torch`/`triton` argument wins; else the TRACER_KERNEL environment variable
   (auto|torch|triton); else auto = torch on CPU tensors, triton on CUDA tensors when triton imports, else torch.
2. Check: triton requested but not importable, or on CPU tensors without TRITON_INTERPRET=1 -> ConfigError.
3. Plan with the resolved backend (`plan_edges`), then `plan.attribute(grads_BLPD)` per batch of targets;
   `edge_attribution` does both in one call.
"""

from __future__ import annotations

import enum
import importlib.util
import os
from typing import Protocol

import torch
from torch import Tensor

from kernels.reference import TorchEdgePlan, plan_edges_torch
from tracer.errors import ConfigError

ENV_VAR = "TRACER_KERNEL"


class KernelBackend(enum.StrEnum):
    """Implementation of `edge_attribution`; AUTO picks by device (module docstring, step 1)."""

    AUTO = "auto"
    TORCH = "torch"
    TRITON = "triton"


class EdgePlan(Protocol):
    """Per-prompt plan of either backend: reuse it for every batch of targets."""

    def attribute(self, grads_BLPD: Tensor, out_BN: Tensor | None = None) -> Tensor:
        """Edge rows [B, N] for gradients [B, L' <= L, P', D]; with out_BN [B, N' <= N] (columns contiguous, any
        row stride), the first N' features' edges written there and out_BN returned."""
        ...


def triton_available() -> bool:
    """Whether the triton package can be imported (it cannot run on CPU without TRITON_INTERPRET=1)."""
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: KernelBackend | str | None, device: torch.device) -> KernelBackend:
    """Step 1 and 2: the concrete backend (TORCH or TRITON) for tensors on `device`."""
    requested = _parse(backend, "backend argument") if backend is not None else KernelBackend.AUTO
    if requested is KernelBackend.AUTO:
        requested = _parse(os.environ.get(ENV_VAR, KernelBackend.AUTO), ENV_VAR)
    if requested is KernelBackend.AUTO:
        return KernelBackend.TRITON if device.type == "cuda" and triton_available() else KernelBackend.TORCH
    if requested is KernelBackend.TRITON:
        if not triton_available():
            raise ConfigError("kernel backend 'triton' requested but the triton package is not installed")
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError("kernel backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 (tests only: slow)")
    return requested


def _parse(value: KernelBackend | str, where: str) -> KernelBackend:
    try:
        return KernelBackend(value)
    except ValueError:
        choices = "|".join(b.value for b in KernelBackend)
        raise ConfigError(f"{where}: unknown kernel backend {value!r}, expected {choices}") from None


def plan_edges(
    dec_NLD: Tensor, layer_N: Tensor, pos_N: Tensor, act_N: Tensor, backend: KernelBackend | str | None = None
) -> EdgePlan:
    """Step 3: per-prompt plan over the N active features; call `.attribute(grads_BLPD) -> [B, N]` per batch.

    dec_NLD [N, L, D] decoder rows per output layer; layer_N, pos_N [N] integer; act_N [N] (dtype of dec_NLD).
    """
    if resolve_backend(backend, dec_NLD.device) is KernelBackend.TRITON:
        from kernels.triton_edge import plan_edges_triton  # lazy: triton reads TRITON_INTERPRET at import

        return plan_edges_triton(dec_NLD, layer_N, pos_N, act_N)
    return plan_edges_torch(dec_NLD, layer_N, pos_N, act_N)


def edge_attribution(
    grads_BLPD: Tensor,
    dec_NLD: Tensor,
    layer_N: Tensor,
    pos_N: Tensor,
    act_N: Tensor,
    backend: KernelBackend | str | None = None,
) -> Tensor:
    """out_BN[b, n] = act_N[n] * sum_{l >= layer_N[n]} <dec_NLD[n, l], grads_BLPD[b, l, pos_N[n]]>.

    grads_BLPD [B, L' <= L, P', D]: layers >= L' and positions >= P' count as zero gradient.
    """
    return plan_edges(dec_NLD, layer_N, pos_N, act_N, backend).attribute(grads_BLPD)


__all__ = ["ENV_VAR", "EdgePlan", "KernelBackend", "TorchEdgePlan", "edge_attribution", "plan_edges", "resolve_backend"]
