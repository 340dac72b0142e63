"""The sparse path of a training step (transcoders.train.loss_fn): when few encoder entries can matter, only
those are computed with gradients, so the encoder's and decoder's cost follows the candidates, not L·T·F.

1. candidates: one dense encoder pass without gradients finds the entries (token, layer, feature) that can be
   active or carry a threshold gradient;
2. EntryPre: their pre-activations are read from that pass, and W_enc's gradient is one batched matmul.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from transcoders.clt import SPARSE_RATIO, Transcoder


class Candidates(NamedTuple):
    """Entries (token, layer, feature) of the sparse path, and the dense pass they were read from."""

    t: torch.Tensor  # [n]
    ly: torch.Tensor  # [n]
    f: torch.Tensor  # [n]
    raw_LTF: torch.Tensor  # [L, T, F] pre-activation minus b_enc (no grad)


def candidates(tc: Transcoder, x: torch.Tensor, bandwidth: float) -> Candidates | None:
    """Step 1: entries that can be active or carry a threshold gradient (pre > θ - ε/2, ε the JumpReLU bandwidth),
    from a gradient-free dense encoder pass in layer-major layout; None when they are too many for the sparse path.
    x [T, L, D] (normalised inputs)."""
    with torch.no_grad():
        raw = torch.bmm(x.transpose(0, 1), tc.W_enc.transpose(1, 2))  # [L, T, F], pre-activation minus b_enc
        lim = -tc.b_enc if tc.theta is None else tc.theta - bandwidth / 2 - tc.b_enc
        ly, t, f = (raw > lim[:, None]).nonzero(as_tuple=True)
        return None if len(t) * SPARSE_RATIO >= raw.numel() else Candidates(t, ly, f, raw)


class EntryPre(torch.autograd.Function):
    """Step 2: pre-activation entries (minus b_enc) read from the dense no-grad pass; W_enc's gradient is one bmm of the
    scattered entry gradients with the inputs (a per-entry gather-multiply of [n, D] rows was 2/3 of a step)."""

    @staticmethod
    def forward(ctx, W_enc_LFD, x_LTD, raw_LTF, ly, t, f):  # type: ignore[override]
        ctx.save_for_backward(x_LTD, ly, t, f)
        ctx.raw_shape = raw_LTF.shape
        return raw_LTF[ly, t, f]

    @staticmethod
    def backward(ctx, grad_n):  # type: ignore[override]
        x_LTD, ly, t, f = ctx.saved_tensors
        g_LTF = grad_n.new_zeros(ctx.raw_shape).index_put_((ly, t, f), grad_n, accumulate=True)
        return torch.bmm(g_LTF.transpose(1, 2), x_LTD), None, None, None, None, None
