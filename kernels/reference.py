"""Sparse edge attribution in plain torch: the ground truth and the CPU production path.

    out_BN[b, n] = act_N[n] * sum_{l >= layer_N[n]} <dec_NLD[n, l], grads_BLPD[b, l, pos_N[n]]>

The same N features are used for every batch of B targets of a prompt, so the work splits in two:

Plan (once per prompt, `plan_edges_torch`):
1. Validate the feature tensors.
2. Span: each feature's decoder is non-zero only on output layers [lo, hi): lo = its layer, hi = one past its
   last non-zero row (L for a CLT, lo + 1 for a per-layer transcoder). All-zero features get no span.
3. Sort features by (position, lo, hi) and count each distinct span at each position.
4. Merge: at each position, partition the sorted spans into runs of least total `GroupCost`; width = the union
   of the run's spans; one matmul per run ("group").
5. Pack: each group's decoder rows, scaled by the activations and zeroed below each feature's own layer,
   as one [rows, width * D] matrix; in bf16, padded with zero rows to a multiple of ROW_QUANTUM (oneDNN compiles
   a bf16 matmul kernel per shape: a handful of row counts instead of one per group; fp32 pads nothing).

Attribute (once per batch, `TorchEdgePlan.attribute`):
1. Validate grads; grads may cover fewer layers L' <= L and positions P' <= P than the features use (a batch of
   targets at early layers / positions): the missing ones count as zero.
2. Per position: view grads[:, :, p, :] as [B, L'*D] (free when grads' L and D are adjacent in memory, e.g. a
   [B, P, L, D] buffer passed as .transpose(1, 2); a small copy otherwise).
3. Per group: one matmul [rows, K] @ [K, B] into its rows of an [N + padding, B] buffer (sorted by group), over
   only the rows of features below L' (a prefix: rows are sorted by layer; in bf16 rounded up to ROW_QUANTUM):
   a feature at or above L' reads no gradient of this batch, so its row is zero without a matmul.
4. Un-sort the rows and transpose to [B, N]; or, given out_BN [B, N' <= N] (any row stride: e.g. the first columns
   of the caller's dense adjacency rows), only the first N' features' columns, written there: one transposing copy
   when those features keep their order in the plan (no gather), else a gather of their rows first.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from tracer.errors import ConfigError

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16)  # bf16: the fast path (tracer trace --dtype bf16)
ROW_QUANTUM = {torch.bfloat16: 16}  # plan phase 5's row padding per dtype (1 if absent); measured in README run 8


@dataclass(frozen=True)
class GroupCost:
    """Time of one group's matmul as (rows + width_rows) * width + call, in units of one decoder row times one
    output layer. Fit by benchmarks/bench_kernel.py on this CPU (B=128, D=128..256): a CLT stays one group per
    position unless its groups are large, a PLT splits by layer unless only a few features share a position."""

    width_rows: float = 24.0  # per-call cost that grows with the width (packing the [width*D, B] gradient block)
    call: float = 48.0  # fixed per-call cost (Python and dispatch)


SPLIT_ALL = GroupCost(0.0, 0.0)  # one group per distinct span (least arithmetic)
ONE_PER_POSITION = GroupCost(0.0, 1e12)  # one group per position (fewest calls)


class EdgeGroup(NamedTuple):
    """Features at one position whose decoders live on output layers [lo, hi): one matmul."""

    pos: int
    lo: int
    hi: int
    start: int  # rows [start, end) of the plan's output buffer (features sorted by group, then padding rows)
    end: int
    dec_scaled: Tensor  # [end - start, (hi - lo) * D], act * decoder rows, zero below each feature's layer and in
    # the padding rows
    below: tuple[int, ...]  # [L + 1]: below[l] = rows of features whose layer is < l (a prefix of the group)


@dataclass(frozen=True)
class TorchEdgePlan:
    """Per-prompt grouping of the active features; reuse `attribute` for every batch of targets."""

    n_features: int
    n_rows: int  # rows of the output buffer: features and padding
    n_layers: int
    d_model: int
    dtype: torch.dtype
    device: torch.device
    groups: tuple[EdgeGroup, ...]  # sorted by position
    inverse_N: Tensor  # [N] output-buffer row of each original feature
    in_order: int  # features 0..in_order-1 sit in output rows 0..in_order-1 (phase 4 needs no gather for them)
    scratch: list[Tensor] = field(default_factory=list, compare=False, repr=False)  # phase 3's buffer, reused

    @torch.no_grad()  # edges are values: never part of an autograd graph
    def attribute(self, grads_BLPD: Tensor, out_BN: Tensor | None = None) -> Tensor:
        """Edge rows [B, N] for a batch of gradients [B, L' <= L, P', D]; with out_BN [B, N' <= N], the first N'
        features' edges written into it (phase 4), which is returned."""
        check_grads(grads_BLPD, self.n_layers, self.d_model, self.dtype, self.device)
        n_batch, n_lay, n_pos, d = grads_BLPD.shape
        check_out(out_BN, n_batch, self.n_features, self.dtype)
        # not zero-filled: only the rows no matmul writes are zeroed (the skipped groups and the spanless features)
        if not self.scratch or self.scratch[0].numel() < self.n_rows * n_batch:  # reused: a fresh one page-faults
            self.scratch[:] = [torch.empty(self.n_rows * n_batch, dtype=self.dtype, device=self.device)]
        out_NB = self.scratch[0][: self.n_rows * n_batch].view(self.n_rows, n_batch)
        out_NB[self.groups[-1].end if self.groups else 0 :] = 0
        pos, grads_BK = -1, grads_BLPD.new_empty(0)
        quantum = ROW_QUANTUM.get(self.dtype, 1)
        n_read = self.n_rows if out_BN is None or out_BN.shape[1] > self.in_order else out_BN.shape[1]
        for g in self.groups:
            if g.pos >= n_pos:  # groups are sorted by position; later positions have no gradient in this batch
                out_NB[g.start : max(n_read, g.start)] = 0  # only the rows phase 4 reads
                break
            hi = min(g.hi, n_lay)
            rows = min(-(-g.below[min(n_lay, self.n_layers)] // quantum) * quantum, g.end - g.start)
            out_NB[g.start + rows : g.end] = 0
            if hi <= g.lo or rows == 0:
                continue
            if g.pos != pos:  # phase 2: one [B, L'*D] matrix per position
                pos, grads_BK = g.pos, grads_BLPD[:, :, g.pos, :].reshape(n_batch, n_lay * d)
            # phase 3: [rows, K] @ [K, B], written straight into this group's rows
            k = (hi - g.lo) * d
            torch.mm(g.dec_scaled[:rows, :k], grads_BK[:, g.lo * d : hi * d].T, out=out_NB[g.start : g.start + rows])
        if out_BN is None:  # phase 4
            return out_NB.index_select(0, self.inverse_N).T.contiguous()
        n = out_BN.shape[1]
        out_BN.copy_((out_NB[:n] if n <= self.in_order else out_NB.index_select(0, self.inverse_N[:n])).T)
        return out_BN


def check_out(out_BN: Tensor | None, n_batch: int, n_features: int, dtype: torch.dtype) -> None:
    """Raise ConfigError unless out_BN is None or [B, N' <= n_features] of the features' dtype, columns contiguous."""
    if out_BN is None:
        return
    if out_BN.ndim != 2 or out_BN.shape[0] != n_batch or out_BN.shape[1] > n_features or out_BN.dtype != dtype:
        raise ConfigError(f"out_BN must be [{n_batch}, <= {n_features}] {dtype}, got {tuple(out_BN.shape)} "
                          f"{out_BN.dtype}")  # fmt: skip
    if out_BN.shape[1] > 1 and out_BN.stride(1) != 1:
        raise ConfigError("out_BN's columns must be contiguous (a row-major block of the caller's rows)")


def check_features(dec_NLD: Tensor, layer_N: Tensor, pos_N: Tensor, act_N: Tensor) -> None:
    """Raise ConfigError unless the feature tensors follow the shape contract (kernels/README.md)."""
    if dec_NLD.ndim != 3:
        raise ConfigError(f"dec_NLD must be [N, L, D], got shape {tuple(dec_NLD.shape)}")
    if dec_NLD.dtype not in FLOAT_DTYPES:
        raise ConfigError(f"dec_NLD must be float32, float64 or bfloat16, got {dec_NLD.dtype}")
    n, n_layers = dec_NLD.shape[:2]
    for name, t in (("layer_N", layer_N), ("pos_N", pos_N), ("act_N", act_N)):
        if t.shape != (n,):
            raise ConfigError(f"{name} must have shape [{n}] like dec_NLD's N, got {tuple(t.shape)}")
        if t.device != dec_NLD.device:
            raise ConfigError(f"{name} is on {t.device} but dec_NLD on {dec_NLD.device}")
    if act_N.dtype != dec_NLD.dtype:
        raise ConfigError(f"act_N dtype {act_N.dtype} differs from dec_NLD dtype {dec_NLD.dtype}")
    for name, t in (("layer_N", layer_N), ("pos_N", pos_N)):
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ConfigError(f"{name} must be an integer tensor, got {t.dtype}")
    if n and (int(layer_N.min()) < 0 or int(layer_N.max()) >= n_layers):
        raise ConfigError(f"layer_N must lie in [0, {n_layers}), got [{int(layer_N.min())}, {int(layer_N.max())}]")
    if n and int(pos_N.min()) < 0:
        raise ConfigError(f"pos_N must be >= 0, got {int(pos_N.min())}")


def check_grads(grads_BLPD: Tensor, n_layers: int, d_model: int, dtype: torch.dtype, device: torch.device) -> None:
    """Raise ConfigError unless grads is [B, L' <= n_layers, P', d_model] of the features' dtype and device."""
    if grads_BLPD.ndim != 4:
        raise ConfigError(f"grads_BLPD must be [B, L, P, D], got shape {tuple(grads_BLPD.shape)}")
    _, n_lay, _, d = grads_BLPD.shape
    if d != d_model or n_lay > n_layers:
        raise ConfigError(
            f"grads_BLPD shape {tuple(grads_BLPD.shape)} does not fit decoders with L={n_layers}, D={d_model}"
        )
    if grads_BLPD.dtype != dtype or grads_BLPD.device != device:
        raise ConfigError(f"grads_BLPD is {grads_BLPD.dtype} on {grads_BLPD.device}, features are {dtype} on {device}")


def feature_spans(dec_NLD: Tensor, layer_N: Tensor) -> tuple[Tensor, Tensor]:
    """Plan phase 2: ([N] lo, [N] hi) with decoder rows non-zero only on [lo, hi); hi == lo if none are."""
    n_layers = dec_NLD.shape[1]
    l_L = torch.arange(n_layers, device=dec_NLD.device)
    used_NL = (dec_NLD != 0).any(dim=-1) & (l_L >= layer_N[:, None])
    last_N = torch.where(used_NL, l_L, -1).amax(dim=1) if n_layers else layer_N - 1
    lo_N = layer_N.long()
    return lo_N, torch.maximum(last_N + 1, lo_N)


def merge_spans(spans: list[tuple[int, int, int]], cost: GroupCost) -> list[tuple[int, int]]:
    """Plan phase 4 at one position: split sorted (lo, hi, count) runs into [i, j) ranges of minimal cost."""
    s = len(spans)
    best = [0.0] + [math.inf] * s  # best[j] = cheapest cost of spans[:j]
    cut = [0] * (s + 1)
    for j in range(1, s + 1):
        rows, lo, hi = 0, spans[j - 1][0], 0
        for i in range(j - 1, -1, -1):  # try the run spans[i:j]
            rows, lo, hi = rows + spans[i][2], min(lo, spans[i][0]), max(hi, spans[i][1])
            total = best[i] + (rows + cost.width_rows) * (hi - lo) + cost.call
            if total < best[j]:
                best[j], cut[j] = total, i
    ranges, j = [], s
    while j > 0:
        ranges.append((cut[j], j))
        j = cut[j]
    return ranges[::-1]


@torch.no_grad()
def plan_edges_torch(
    dec_NLD: Tensor, layer_N: Tensor, pos_N: Tensor, act_N: Tensor, cost: GroupCost = GroupCost(),
    quantum: int | None = None,
) -> TorchEdgePlan:
    """Group features for `TorchEdgePlan.attribute` (module docstring, plan steps 1-5); quantum: pad each group's
    rows to a multiple of it (default ROW_QUANTUM of the dtype)."""
    quantum = quantum or ROW_QUANTUM.get(dec_NLD.dtype, 1)
    check_features(dec_NLD, layer_N, pos_N, act_N)
    n, n_layers, d = dec_NLD.shape
    lo_N, hi_N = feature_spans(dec_NLD, layer_N)
    # phase 3: features without a span sort last (position n_pos) and land in no group: their rows stay zero
    n_pos = int(pos_N.max()) + 1 if n else 0
    pos_key_N = torch.where(hi_N > lo_N, pos_N.long(), n_pos)
    key_N = (pos_key_N * (n_layers + 1) + lo_N) * (n_layers + 1) + hi_N
    order_N = torch.argsort(key_N, stable=True)
    keys, counts = torch.unique_consecutive(key_N[order_N], return_counts=True)
    runs = []  # (pos, lo, hi, count), sorted
    for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
        (p, lo), hi = divmod(key // (n_layers + 1), n_layers + 1), key % (n_layers + 1)
        if p < n_pos:
            runs.append((p, lo, hi, count))
    groups: list[EdgeGroup] = []
    start, slot = 0, 0  # next sorted feature, next output row
    slot_N = torch.empty_like(order_N)  # output row of each sorted feature
    for p, at_p in itertools.groupby(runs, key=lambda r: r[0]):
        spans = [(lo, hi, c) for _, lo, hi, c in at_p]
        for i, j in merge_spans(spans, cost):  # phase 4
            lo, hi = min(x[0] for x in spans[i:j]), max(x[1] for x in spans[i:j])
            end = start + sum(x[2] for x in spans[i:j])
            packed = _pack(dec_NLD, act_N, lo_N, order_N[start:end], lo, hi)
            rows = end - start
            packed = torch.cat([packed, packed.new_zeros(-rows % quantum, packed.shape[1])])
            slot_N[start:end] = torch.arange(slot, slot + rows, device=order_N.device)
            below = torch.searchsorted(lo_N[order_N[start:end]], torch.arange(n_layers + 1, device=lo_N.device))
            groups.append(EdgeGroup(p, lo, hi, slot, slot + len(packed), packed, tuple(below.tolist())))
            start, slot = end, slot + len(packed)
    slot_N[start:] = torch.arange(slot, slot + n - start, device=order_N.device)  # spanless: rows stay zero
    inverse_N = torch.empty_like(order_N)
    inverse_N[order_N] = slot_N
    moved = (inverse_N != torch.arange(n, device=inverse_N.device)).nonzero()
    in_order = int(moved[0, 0]) if len(moved) else n
    return TorchEdgePlan(n, slot + n - start, n_layers, d, dec_NLD.dtype, dec_NLD.device, tuple(groups), inverse_N,
                         in_order)  # fmt: skip


def _pack(dec_NLD: Tensor, act_N: Tensor, lo_N: Tensor, rows: Tensor, lo: int, hi: int) -> Tensor:
    """Plan phase 5: [rows, (hi - lo) * D] block of act * decoder, zero below each feature's own layer."""
    keep_RL = torch.arange(lo, hi, device=rows.device) >= lo_N[rows][:, None]
    scale_RL = act_N[rows][:, None] * keep_RL
    return (dec_NLD[rows, lo:hi] * scale_RL[..., None]).reshape(len(rows), -1)


def edge_attribution_torch(
    grads_BLPD: Tensor, dec_NLD: Tensor, layer_N: Tensor, pos_N: Tensor, act_N: Tensor
) -> Tensor:
    """One-shot [B, N] edges; build the plan once with `plan_edges_torch` when features repeat across batches."""
    return plan_edges_torch(dec_NLD, layer_N, pos_N, act_N).attribute(grads_BLPD)
