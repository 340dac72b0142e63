"""The unpruned adjacency A[target, source] as compressed sparse rows, and the passes pruning and scoring make over it.

0. build (RowStore): rows arrive as dense blocks in any order; each row owns a slot as wide as the sources it
   can read (NodeLayout.max_sources, at most K with --edge-topk) in buffers the OS commits only where written, so
   its non-zeros are written straight to their place; finishing closes the gaps between slots in place, one
   memmove per run of rows that shift alike. No COO int64 temporaries beyond one batch, no global sort: 8 bytes
   per stored edge (float32) plus the pages of the gaps.
   With a row budget (--max-feature-nodes) slots are handed out in arrival order instead, and finishing copies.
1. store: `crow` [n+1] int64 row pointers, `col` [nnz] int32 source columns (ascending within a row), `values`
   [nnz] (float32; float16 when a sidecar stores them so): 8 bytes per edge in float32. The arrays may be
   memory-mapped from a sidecar (tracer.sidecar); no pass allocates anything of size nnz.
2. chunks: contiguous row ranges of at most CHUNK_ENTRIES entries; a chunk expands its entries' row ids (int64)
   and upcasts its values, so temporaries are bounded by the chunk, not the graph.
3. passes: |A| row sums (over a column range: only each row's run of entries in it, found by bisecting every row
   at once, since columns ascend within a row); the transposed mat-vec xᵀÂ with Â the row-normalised |A|; the
   entries between a node subset, or of a row subset, as a small edge list (tracer.prune.Edges) for the steps that
   follow.
4. influence: I = wᵀ(Â + Â² + …), a case of path sums (`paths`). Given topological levels (row groups such that
   every row's sources lie in later levels: logits, then features by layer from the top; NodeLayout.levels) it
   is one pass: each level's rows have their final I + w when reached and push it to their sources. The order is
   verified (a row that receives influence after it was processed means the levels were wrong), and the power
   series vᵀ ← vᵀÂ — which ends because Â is nilpotent on a DAG — is the fallback and the path without levels.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from tracer.errors import GraphFileError

CHUNK_ENTRIES = 1 << 21  # entries per chunk: bounds every pass's temporaries (~16 MB per float64 temporary)
ROW_SUM_MIN = 1e-10  # circuit-tracer's clamp of a row's |A| sum


class Chunk(NamedTuple):
    """Rows [start, stop) of a CsrAdjacency: each entry's row, column and value."""

    start: int
    stop: int
    rows: Tensor  # [k] int64
    cols: Tensor  # [k] int32 (a view of the CSR's columns)
    values: Tensor  # [k] as stored


@dataclass(frozen=True, eq=False)
class CsrAdjacency:
    """A square sparse matrix A[target, source] in CSR (module docstring, step 1)."""

    crow: Tensor  # [n + 1] int64 row pointers
    col: Tensor  # [nnz] int32 source columns, ascending within each row
    values: Tensor  # [nnz] edge weights

    @property
    def n(self) -> int:
        return int(self.crow.numel()) - 1

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @cached_property
    def counts(self) -> Tensor:
        """[n] int64 stored entries per row."""
        return self.crow.diff()

    @classmethod
    def of(cls, a: Tensor | CsrAdjacency) -> CsrAdjacency:
        """From a CsrAdjacency (returned as is) or a torch COO / CSR / dense square matrix (stored zeros dropped)."""
        if isinstance(a, CsrAdjacency):
            return a
        if a.dim() != 2 or a.shape[0] != a.shape[1]:
            raise GraphFileError(f"adjacency must be a square matrix, got shape {tuple(a.shape)}")
        coo = (a if a.layout == torch.sparse_coo else a.to_sparse_coo()).coalesce()
        (rows, cols), vals = coo.indices(), coo.values()
        nz = vals != 0
        return cls.from_coo(rows[nz], cols[nz], vals[nz], int(a.shape[0]))

    @classmethod
    def from_coo(cls, rows: Tensor, cols: Tensor, values: Tensor, n: int) -> CsrAdjacency:
        """From row-major sorted COO entries (small graphs, tests and old sidecars)."""
        crow = torch.zeros(n + 1, dtype=torch.long)
        crow[1:] = torch.bincount(rows.long(), minlength=n).cumsum(0)
        return cls(crow, cols.to(torch.int32), values)

    @classmethod
    def empty(cls, n: int, dtype: torch.dtype = torch.float32) -> CsrAdjacency:
        return cls(torch.zeros(n + 1, dtype=torch.long), torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=dtype))

    def to_sparse_coo(self) -> Tensor:
        """Sparse COO [n, n] (int64 indices: small graphs only)."""
        rows = torch.repeat_interleave(torch.arange(self.n), self.counts)
        idx = torch.stack([rows, self.col.long()])
        return torch.sparse_coo_tensor(idx, self.values, self.shape, check_invariants=False).coalesce()

    def to_sparse_csr(self) -> Tensor:
        """torch sparse CSR [n, n] (int64 columns)."""
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.col.long(), self.values, self.shape)

    def to_dense(self) -> Tensor:
        """Dense [n, n] (small graphs only)."""
        out = torch.zeros(self.shape, dtype=self.values.dtype)
        for c in self.chunks():
            out[c.rows, c.cols.long()] = c.values
        return out

    # 2. chunks

    def spans(self, start: int = 0, stop: int | None = None, max_entries: int | None = None,
               ) -> Iterator[tuple[int, int, int, int]]:  # fmt: skip
        """Rows [start, stop) in contiguous pieces (r0, r1, e0, e1) of at most max_entries (default CHUNK_ENTRIES)
        entries e0..e1 (a longer row is its own piece)."""
        stop = self.n if stop is None else stop
        max_entries = max_entries or CHUNK_ENTRIES
        while start < stop:
            e0 = int(self.crow[start])
            end = int(torch.searchsorted(self.crow[start + 1 : stop + 1], e0 + max_entries, right=True)) + start
            end = max(end, start + 1)
            yield start, end, e0, int(self.crow[end])
            start = end

    def chunks(self, start: int = 0, stop: int | None = None, max_entries: int | None = None) -> Iterator[Chunk]:
        """`spans` as Chunks, with each entry's row."""
        for r0, r1, e0, e1 in self.spans(start, stop, max_entries):
            rows = torch.repeat_interleave(torch.arange(r0, r1), self.counts[r0:r1], output_size=e1 - e0)
            yield Chunk(r0, r1, rows, self.col[e0:e1], self.values[e0:e1])

    # 3. passes

    @cached_property
    def row_abs_sums(self) -> Tensor:
        """[n] float64 Σ_s |A[t, s]| of every row."""
        return self.abs_sums_from()

    def abs_sums_from(self, sources: slice | None = None) -> Tensor:
        """[n] float64 Σ_s |A[t, s]| of every row over the source columns sources.start..stop - 1 (None: all), each
        row's entries added in column order."""
        if sources is not None:
            return self._abs_sums_of_runs(self.first_col_at_least(sources.start), self.first_col_at_least(sources.stop))
        out = torch.zeros(self.n, dtype=torch.float64)
        for r0, r1, e0, e1 in self.spans():
            v = self.values[e0:e1].to(torch.float64, copy=True).abs_()
            out[r0:r1] = torch.segment_reduce(v, "sum", lengths=self.counts[r0:r1])
        return out

    def first_col_at_least(self, c: int) -> Tensor:
        """[n] int64 each row's first entry whose column is >= c (its end if none): a bisection of every row at
        once (columns ascend within a row), ~log2(longest row) steps over [n] vectors, no pass over the entries."""
        lo, hi, last = self.crow[:-1].clone(), self.crow[1:].clone(), max(self.nnz - 1, 0)
        while bool((open_ := lo < hi).any()):
            mid = (lo + hi) // 2
            right = open_ & (self.col[mid.clamp_max(last)] < c)
            lo, hi = torch.where(right, mid + 1, lo), torch.where(open_ & ~right, mid, hi)
        return lo

    def _abs_sums_of_runs(self, start: Tensor, stop: Tensor) -> Tensor:
        """[n] float64 Σ |values[start[t]:stop[t]]| per row t, added in order, chunk by chunk (CHUNK_ENTRIES);
        equal to the masked sum over the whole row, whose other entries add +0."""
        out, lengths, r0 = torch.zeros(self.n, dtype=torch.float64), stop - start, 0
        ends = lengths.cumsum(0)
        while r0 < self.n:
            base = int(ends[r0 - 1]) if r0 else 0
            r1 = max(int(torch.searchsorted(ends[r0:], base + CHUNK_ENTRIES, right=True)) + r0, r0 + 1)
            k = int(ends[r1 - 1]) - base
            # each run's entries: its start repeated over its length plus the offset within the run
            first = torch.repeat_interleave(start[r0:r1] - (ends[r0:r1] - lengths[r0:r1] - base), lengths[r0:r1],
                                            output_size=k)  # fmt: skip
            v = self.values[first + torch.arange(k)].to(torch.float64).abs_()
            out[r0:r1] = torch.segment_reduce(v, "sum", lengths=lengths[r0:r1])
            r0 = r1
        return out

    def push(self, coef: Tensor, out: Tensor, start: int = 0, stop: int | None = None, absolute: bool = True) -> None:
        """out[s] += Σ_t coef[t]·|A[t, s]| (A[t, s] if not absolute) over rows t in [start, stop); with coef = x / row
        sums this adds xᵀÂ."""
        for r0, r1, e0, e1 in self.spans(start, stop):
            v = self.values[e0:e1].to(torch.float64, copy=True)
            # each row's coefficient repeated over its entries: one op, no per-entry row index to gather through
            rep = torch.repeat_interleave(coef[r0:r1], self.counts[r0:r1], output_size=e1 - e0)
            out.index_add_(0, self.col[e0:e1], (v.abs_() if absolute else v).mul_(rep))

    def select(self, row_mask: Tensor, col_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The entries in rows of row_mask [n] bool (and columns of col_mask, if given): int64 rows and cols, values."""
        rows, cols, vals = [], [], []
        for start, stop in runs(row_mask):
            for c in self.chunks(start, stop):
                keep = col_mask[c.cols] if col_mask is not None else torch.ones_like(c.rows, dtype=torch.bool)
                rows.append(c.rows[keep])
                cols.append(c.cols[keep].long())
                vals.append(c.values[keep])
        if not rows:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), self.values[:0]
        return torch.cat(rows), torch.cat(cols), torch.cat(vals)


def runs(mask: Tensor) -> list[tuple[int, int]]:
    """The maximal [start, stop) ranges where mask [n] bool is True."""
    m = torch.cat([torch.zeros(1, dtype=torch.int8), mask.to(torch.int8), torch.zeros(1, dtype=torch.int8)])
    edges = m.diff().nonzero().flatten().tolist()
    return list(zip(edges[::2], edges[1::2], strict=True))


# 0. build


def _bits(t: Tensor) -> np.ndarray:
    """t's elements as numpy integers of the same width (numpy has no bf16; copies move bits, not values)."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]).numpy()


def _nonzero_mask(dense: Tensor) -> np.ndarray:
    """[B, n] bool, dense != 0 (NaN counts as non-zero, -0.0 as zero)."""
    if dense.dtype == torch.bfloat16:  # numpy has no bf16: test the bits without the sign
        return (_bits(dense) & 0x7FFF) != 0
    return dense.numpy() != 0


class RowStore:
    """Collects rows into a CsrAdjacency (module docstring, step 0)."""

    def __init__(self, room: Tensor, dtype: torch.dtype, max_rows: int | None = None) -> None:
        """room [n] int64: the most entries each row can have; max_rows: with a row budget, how many rows of
        the largest room may arrive (slots are then handed out in arrival order)."""
        n = int(room.numel())
        self.room, self.count = room, torch.zeros(n, dtype=torch.long)
        self.fixed = max_rows is None
        if self.fixed:
            self.start = torch.zeros(n, dtype=torch.long)
            self.start[1:] = room.cumsum(0)[:-1]
            capacity = int(room.sum())
        else:
            self.start = torch.full((n,), -1, dtype=torch.long)
            capacity = int(room.sort(descending=True).values[:max_rows].sum())
        self.cursor = 0
        # torch.empty: pages are committed when first written, so unused room costs address space only
        self.col = torch.empty(capacity, dtype=torch.int32)
        self.val = torch.empty(capacity, dtype=dtype)

    def put(self, rows: Tensor, dense: Tensor, gap_at: int = 0, gap: int = 0) -> None:
        """rows [B] int64 target rows (each written once), dense [B, n] their values over columns 0..n-1; zeros
        are not stored. With a gap, dense column j >= gap_at is column j + gap (the columns between are zero)."""
        dense = dense.cpu().contiguous()  # the store lives in host memory
        B, n = dense.shape
        # numpy on the mask: its compare and boolean subscripts are several times torch's != and nonzero here (one
        # thread); the subscripts give the values and their (int32) columns in row-major order without an index
        # array: each row's entries are one run, in column order
        mask = _nonzero_mask(dense)
        counts_np = mask.view(np.uint8).sum(axis=1, dtype=np.int64)
        counts = torch.from_numpy(counts_np)
        if bool((counts > self.room[rows]).any()):
            raise RuntimeError("a row has more sources than its layout allows (non-causal model?)")
        if not self.fixed:
            fresh = self.start[rows] < 0
            need = self.room[rows[fresh]]
            self.start[rows[fresh]] = self.cursor + need.cumsum(0) - need
            self.cursor += int(need.sum())
            if self.cursor > self.col.numel():
                raise RuntimeError("more rows than the row budget")
        col_of = np.arange(n, dtype=np.int32)
        col_of[gap_at:] += gap
        cols = np.broadcast_to(col_of, (B, n))[mask]
        val = _bits(dense)[mask]
        if dense.dtype != self.val.dtype:  # bf16 rows are stored widened
            val = _bits(torch.from_numpy(val).view(dense.dtype).to(self.val.dtype))
        col_out, val_out = self.col.numpy(), _bits(self.val)
        # one slice copy per row (a scatter through computed destinations cost more than all of this)
        ends = np.cumsum(counts_np)
        for o, e, s in zip((ends - counts_np).tolist(), ends.tolist(), self.start[rows].tolist(), strict=True):
            col_out[s : s + e - o] = cols[o:e]
            val_out[s : s + e - o] = val[o:e]
        self.count[rows] = counts

    def _crow(self) -> Tensor:
        crow = torch.zeros(self.count.numel() + 1, dtype=torch.long)
        crow[1:] = self.count.cumsum(0)
        return crow

    def _gather(self, out_col: Tensor, out_val: Tensor) -> Tensor:
        """Copy every row's entries to its CSR place in new buffers out_*, chunk by chunk. Returns crow."""
        crow, n = self._crow(), self.count.numel()
        r0 = 0
        while r0 < n:
            r1 = min(max(int(torch.searchsorted(crow, int(crow[r0]) + CHUNK_ENTRIES, right=True)) - 1, r0 + 1), n)
            e0, e1 = int(crow[r0]), int(crow[r1])
            if e1 > e0:
                rows = torch.repeat_interleave(torch.arange(r0, r1), self.count[r0:r1], output_size=e1 - e0)
                src = self.start[rows] - crow[rows] + torch.arange(e0, e1)
                out_col[e0:e1], out_val[e0:e1] = self.col[src], self.val[src]
            r0 = r1
        return crow

    def _compact(self) -> Tensor:
        """Close the gaps between fixed slots in place: rows never move right, so moving runs of rows that shift
        alike, in row order, overwrites nothing still to be read (numpy copies overlapping ranges correctly)."""
        crow = self._crow()
        rows = self.count.nonzero().flatten()
        if rows.numel() == 0:
            return crow
        shift = self.start[rows] - crow[rows]
        cut = torch.cat([torch.tensor([0]), (shift.diff() != 0).nonzero().flatten() + 1, torch.tensor([len(rows)])])
        col, val = self.col.numpy(), _bits(self.val)
        for i, j in zip(cut[:-1].tolist(), cut[1:].tolist(), strict=True):
            first, last = int(rows[i]), int(rows[j - 1])
            d0, d1, k = int(crow[first]), int(crow[last + 1]), int(shift[i])
            if k:
                col[d0:d1] = col[d0 + k : d1 + k]
                val[d0:d1] = val[d0 + k : d1 + k]
        return crow

    def snapshot(self) -> CsrAdjacency:
        """The rows so far, as a compact copy (building goes on)."""
        nnz = int(self.count.sum())
        col, val = torch.empty(nnz, dtype=torch.int32), torch.empty(nnz, dtype=self.val.dtype)
        return CsrAdjacency(self._gather(col, val), col, val)

    def finish(self) -> CsrAdjacency:
        """All rows as CSR; with fixed slots, compacted in place (the store is spent)."""
        if not self.fixed:
            return self.snapshot()
        crow = self._compact()
        nnz = int(crow[-1])
        return CsrAdjacency(crow, self.col[:nnz], self.val[:nnz])


# 4. influence


def influence(adj: CsrAdjacency, weights: Tensor, levels: list[list[tuple[int, int]]] | None = None) -> Tensor:
    """[n] float64 I = wᵀ(Â + Â² + …) (module docstring, step 4). levels: row ranges per topological level."""
    w, sums = weights.double(), adj.row_abs_sums
    if not bool(torch.isfinite(sums).all()) or not bool(torch.isfinite(w).all()):
        raise GraphFileError("adjacency or logit weights hold NaN/Inf: influence is undefined")
    scale = 1.0 / sums.clamp_min(ROW_SUM_MIN)
    return paths(adj, w * scale, scale, levels, absolute=True)


def paths(adj: CsrAdjacency, seed: Tensor, scale: Tensor, levels: list[list[tuple[int, int]]] | None = None,
          absolute: bool = False) -> Tensor:  # fmt: skip
    """[n] float64 y solving y[s] = Σ_t (scale[t]·y[t] + seed[t])·B[t, s], B = |A| (absolute) or A: the sum over all
    paths into s, each edge weighted by B and each node it passes by `scale`. Influence is y with B = |A|,
    seed = w / row sums, scale = 1 / row sums; signed path sums (tracer.effects) use B = A. One pass in the order of
    `levels` when they are a topological order of the graph, else the power series."""
    if levels is not None:
        got = _paths_levels(adj, seed.double(), scale.double(), levels, absolute)
        if got is not None:
            return got
    return _paths_series(adj, seed.double(), scale.double(), absolute)


def _paths_levels(adj: CsrAdjacency, seed: Tensor, scale: Tensor, levels: list[list[tuple[int, int]]],
                  absolute: bool) -> Tensor | None:  # fmt: skip
    acc = torch.zeros(adj.n, dtype=torch.float64)  # y received so far
    done = torch.zeros(adj.n, dtype=torch.bool)
    seen = torch.zeros(adj.n, dtype=torch.float64)  # each row's y when it was processed
    for level in levels:
        coef = torch.zeros(adj.n, dtype=torch.float64)
        for start, stop in level:
            seen[start:stop], done[start:stop] = acc[start:stop], True
            coef[start:stop] = scale[start:stop] * acc[start:stop] + seed[start:stop]
        for start, stop in level:
            adj.push(coef, acc, start, stop, absolute)
    if bool((adj.counts.gt(0) & ~done).any()) or not torch.equal(acc[done], seen[done]):
        return None  # not a topological order of this graph
    return acc


def _paths_series(adj: CsrAdjacency, seed: Tensor, scale: Tensor, absolute: bool) -> Tensor:
    coef, total = seed, torch.zeros(adj.n, dtype=torch.float64)
    for _ in range(adj.n + 1):
        nxt = torch.zeros(adj.n, dtype=torch.float64)
        for start, stop in runs(coef != 0):
            adj.push(coef, nxt, start, stop, absolute)
        if not nxt.any():
            return total
        total += nxt
        coef = scale * nxt
    raise GraphFileError("adjacency has a cycle: influence did not vanish after n_nodes steps (not a DAG)")
