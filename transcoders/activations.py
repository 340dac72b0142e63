"""Feature nonlinearities on pre-activations `[tokens, layer, features]`.

1. JumpReLU: `a = pre * (pre > θ)` (strict). Backward: `∂a/∂pre = 1[pre > θ]`; the threshold gets the
   straight-through estimate `∂a/∂θ = -(θ/ε) · 1[|pre - θ| < ε/2]` (rectangle kernel of bandwidth ε).
2. ReLU: `max(pre, 0)`.
3. TopK: per token and layer keep the k largest pre-activations (clamped at 0), zero the rest.
"""

from __future__ import annotations

import torch


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        (grad,) = grads
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold)
        kernel = ((pre - threshold).abs() < eps / 2).to(grad.dtype)
        grad_thr = -(threshold / eps) * kernel * grad
        # sum over the broadcast (token) dims so the gradient has the threshold's shape
        grad_thr = grad_thr.sum_to_size(threshold.shape)
        return grad_pre, grad_thr, None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """pre [..., F], threshold broadcastable (e.g. [L, F]) -> activations of pre's shape."""
    return _JumpReLU.apply(pre, threshold, bandwidth)  # type: ignore[return-value]


def topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest of the last dim (clamped at 0); gradient flows to the kept values."""
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals.clamp_min(0))
