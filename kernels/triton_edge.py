"""Sparse edge attribution as one Triton kernel (GPU; on CPU only under TRITON_INTERPRET=1, for tests).

    out_BN[b, n] = act_N[n] * sum_{l >= layer_N[n]} <dec_NLD[n, l], grads_BLPD[b, l, pos_N[n]]>

Plan (once per prompt, `plan_edges_triton`):
1. Validate the feature tensors; sort them by (position, layer) so neighbouring programs gather the same
   gradient rows (cache reuse); keep each sorted feature's original column.

Kernel (once per batch, one program per (B block, N block) tile):
1. Load the tile's features: layer, position, activation, original column.
2. For each output layer l from the tile's lowest feature layer to L' - 1, for each D block: gather the
   [BLOCK_B, BLOCK_N, BLOCK_D] gradients at each feature's position and the [BLOCK_N, BLOCK_D] decoder rows
   (masked to l >= the feature's layer), multiply and reduce over D into a register accumulator.
3. Scale by the activations and store to the features' original columns.

TRITON_INTERPRET must be set before this module is imported: triton reads it when `@triton.jit` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.reference import check_features, check_grads, check_out
from tracer.errors import ConfigError

BLOCK_B, BLOCK_N, BLOCK_D = 16, 32, 32


@triton.jit
def _edge_kernel(
    grads_ptr, dec_ptr, layer_ptr, pos_ptr, act_ptr, col_ptr, out_ptr,
    n_batch, n_feat, n_lay, n_pos, d_model,
    s_gb, s_gl, s_gp, s_gd, s_dn, s_dl, s_dd,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_b, mask_n = offs_b < n_batch, offs_n < n_feat
    # phase 1: the tile's features (padding features get layer n_lay: they never enter the layer loop)
    lay_n = tl.load(layer_ptr + offs_n, mask=mask_n, other=n_lay)
    pos_n = tl.load(pos_ptr + offs_n, mask=mask_n, other=0)
    act_n = tl.load(act_ptr + offs_n, mask=mask_n, other=0.0)
    col_n = tl.load(col_ptr + offs_n, mask=mask_n, other=0)
    live_n = mask_n & (pos_n < n_pos)  # positions past the batch's gradients have none
    g_row = offs_b.to(tl.int64)[:, None, None] * s_gb + pos_n[None, :, None] * s_gp  # [BB, BN, 1]
    d_row = offs_n.to(tl.int64)[:, None] * s_dn  # [BN, 1]
    acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=out_ptr.dtype.element_ty)
    # phase 2: output layers >= each feature's layer, D in blocks
    first_l = tl.min(lay_n, axis=0)
    for out_l in range(first_l, n_lay):  # pyright: ignore[reportArgumentType]  (a triton scalar, not an int)
        use_n = live_n & (lay_n <= out_l)
        for d0 in range(0, d_model, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < d_model
            dec = tl.load(
                dec_ptr + d_row + out_l * s_dl + offs_d[None, :] * s_dd,
                mask=use_n[:, None] & mask_d[None, :],
                other=0.0,
            )  # [BN, BD]
            g = tl.load(
                grads_ptr + g_row + out_l * s_gl + offs_d[None, None, :] * s_gd,
                mask=mask_b[:, None, None] & use_n[None, :, None] & mask_d[None, None, :],
                other=0.0,
            )  # [BB, BN, BD]
            acc += tl.sum(g * dec[None, :, :], axis=2)
    # phase 3: scale and store to the original columns
    acc = acc * act_n[None, :]
    out = out_ptr + offs_b.to(tl.int64)[:, None] * n_feat + col_n[None, :]
    tl.store(out, acc, mask=mask_b[:, None] & mask_n[None, :])


# Whether the kernel above was built for the interpreter (CPU tensors) rather than a GPU driver.
INTERPRETED = not isinstance(_edge_kernel, triton.runtime.JITFunction)


@dataclass(frozen=True)
class TritonEdgePlan:
    """Features sorted by (position, layer); reuse `attribute` for every batch of targets."""

    dec_NLD: Tensor  # [N, L, D] contiguous, sorted
    layer_N: Tensor  # [N] int64, sorted
    pos_N: Tensor  # [N] int64, sorted
    act_N: Tensor  # [N], sorted
    col_N: Tensor  # [N] int64, original column of each sorted feature

    @torch.no_grad()
    def attribute(self, grads_BLPD: Tensor, out_BN: Tensor | None = None) -> Tensor:
        """Edge rows [B, N] for a batch of gradients [B, L' <= L, P', D]; with out_BN [B, N' <= N], the first N'
        columns copied into it (kernels.dispatch.EdgePlan), which is returned."""
        check_out(out_BN, grads_BLPD.shape[0], self.dec_NLD.shape[0], self.dec_NLD.dtype)
        full_BN = self._attribute(grads_BLPD)
        return full_BN if out_BN is None else out_BN.copy_(full_BN[:, : out_BN.shape[1]])

    def _attribute(self, grads_BLPD: Tensor) -> Tensor:
        n, n_layers, d = self.dec_NLD.shape
        check_grads(grads_BLPD, n_layers, d, self.dec_NLD.dtype, self.dec_NLD.device)
        if grads_BLPD.device.type == "cpu" and not INTERPRETED:
            raise ConfigError("triton backend on CPU tensors needs TRITON_INTERPRET=1 set before import")
        n_batch, n_lay, n_pos, _ = grads_BLPD.shape
        out_BN = torch.zeros(n_batch, n, dtype=grads_BLPD.dtype, device=grads_BLPD.device)
        if n_batch == 0 or n == 0 or n_lay == 0 or n_pos == 0:
            return out_BN
        grid = (triton.cdiv(n_batch, BLOCK_B), triton.cdiv(n, BLOCK_N))
        launch: Any = _edge_kernel[grid]  # triton types constexpr params as tl.constexpr, not int
        launch(
            grads_BLPD, self.dec_NLD, self.layer_N, self.pos_N, self.act_N, self.col_N, out_BN,
            n_batch, n, n_lay, n_pos, d,
            *grads_BLPD.stride(), *self.dec_NLD.stride(),
            BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
        )  # fmt: skip
        return out_BN


@torch.no_grad()
def plan_edges_triton(dec_NLD: Tensor, layer_N: Tensor, pos_N: Tensor, act_N: Tensor) -> TritonEdgePlan:
    """Plan step 1 of the module docstring."""
    check_features(dec_NLD, layer_N, pos_N, act_N)
    n_layers = dec_NLD.shape[1]
    order_N = torch.argsort(pos_N.long() * max(n_layers, 1) + layer_N.long(), stable=True)
    return TritonEdgePlan(
        dec_NLD[order_N].contiguous(),
        layer_N[order_N].long().contiguous(),
        pos_N[order_N].long().contiguous(),
        act_N[order_N].contiguous(),
        order_N,
    )


def edge_attribution_triton(
    grads_BLPD: Tensor, dec_NLD: Tensor, layer_N: Tensor, pos_N: Tensor, act_N: Tensor
) -> Tensor:
    """One-shot [B, N] edges with the Triton kernel."""
    return plan_edges_triton(dec_NLD, layer_N, pos_N, act_N).attribute(grads_BLPD)
