"""CSR adjacency: building from row blocks in any order, chunked passes, and influence / path sums against dense
closed forms (matrix inverses) and the edge-list power series the CSR passes replaced."""

from __future__ import annotations

import pytest
import torch

import tracer.csr as csr_mod
from tests.tracer.graph_fixtures import random_attribution
from tracer.csr import CsrAdjacency, RowStore, influence, paths
from tracer.errors import GraphFileError
from tracer.prune import Edges, influence_series, logit_weights, normalized


@pytest.fixture(params=[1 << 21, 7], ids=["one-chunk", "tiny-chunks"])
def chunk(request, monkeypatch):
    """Every pass once in one chunk and once in chunks of 7 entries (rows split across many chunks)."""
    monkeypatch.setattr(csr_mod, "CHUNK_ENTRIES", request.param)
    return request.param


def lower_dense(n: int, seed: int, density: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """A random strictly lower-triangular [n, n] matrix and its rows' room (row r may read columns < r)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    a *= (torch.rand(n, n, generator=g) < density) & torch.ones(n, n, dtype=torch.bool).tril(-1)
    return a, torch.arange(n)


@pytest.mark.parametrize("seed", [0, 1])
def test_rowstore_any_order_fixed_slots(chunk, seed):
    a, room = lower_dense(40, seed)
    store = RowStore(room, torch.float64)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(seed))
    for batch in order.split(6):
        store.put(batch, a[batch])
    mid = store.snapshot()
    assert torch.equal(mid.to_dense(), a)
    got = store.finish()
    assert torch.equal(got.to_dense(), a) and got.nnz == int((a != 0).sum())
    assert got.col.dtype == torch.int32 and got.crow.dtype == torch.int64
    bounds = zip(got.crow[:-1].tolist(), got.crow[1:].tolist(), strict=True)
    assert all(bool((got.col[s:e].diff() > 0).all()) for s, e in bounds)  # ascending columns in every row


def test_rowstore_budget_and_partial_rows(chunk):
    a, room = lower_dense(30, 3, density=0.8)
    store = RowStore(room, torch.float64, max_rows=5)
    rows = torch.tensor([29, 3, 17, 11, 25])
    store.put(rows[:2], a[rows[:2]])
    assert torch.equal(store.snapshot().to_dense()[rows[:2]], a[rows[:2]])
    store.put(rows[2:], a[rows[2:]])
    want = torch.zeros_like(a)
    want[rows] = a[rows]
    assert torch.equal(store.finish().to_dense(), want)
    with pytest.raises(RuntimeError, match="row budget"):  # room for the 5 widest rows: 135 entries, 85 used
        store.put(torch.tensor([28, 27]), a[[28, 27]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rowstore_zero_test_by_bits(dtype):
    """bf16 rows are tested for zero on their bits: -0.0 is zero, the smallest subnormal and NaN are not; stored
    widened to fp32 with every value exact."""
    tiny = torch.finfo(dtype).smallest_normal / 4  # subnormal
    a = torch.tensor([[0.0, -0.0, tiny, -tiny, float("nan"), 0.0], [1.0, 0.0, -0.0, -2.5, 0.0, 3.0]]).to(dtype)
    store = RowStore(torch.tensor([6, 6]), torch.float32)
    store.put(torch.tensor([1, 0]), a)
    got = store.finish()
    assert got.crow.tolist() == [0, 3, 6] and got.col.tolist() == [0, 3, 5, 2, 3, 4]
    want = a[[1, 0]].float()
    assert torch.equal(got.values[:5], want[want != 0][:5]) and bool(got.values[5].isnan())


@pytest.mark.parametrize("gap_at", [0, 5, 13, 20])
def test_rowstore_gap_maps_block_columns(gap_at):
    """A block without the zero columns [gap_at, gap_at + 7) stores exactly what the full rows store (the row
    builder passes only the columns a batch can read, tracer.layout.SourceBlock)."""
    a, room = lower_dense(40, 5, density=0.6)
    a[:, gap_at : gap_at + 7] = 0
    full, gapped = RowStore(room, torch.float64), RowStore(room, torch.float64)
    rows = torch.tensor([39, 2, 30, 21, 12])
    full.put(rows, a[rows])
    gapped.put(rows, torch.cat([a[rows, :gap_at], a[rows, gap_at + 7 :]], 1), gap_at, 7)
    got, want = gapped.finish(), full.finish()
    assert torch.equal(got.crow, want.crow) and torch.equal(got.col, want.col) and torch.equal(got.values, want.values)


def test_rowstore_rejects_rows_wider_than_their_room():
    store = RowStore(torch.tensor([0, 1, 1]), torch.float32)
    with pytest.raises(RuntimeError, match="more sources"):
        store.put(torch.tensor([1]), torch.tensor([[1.0, 2.0, 0.0]]))


def test_chunks_cover_rows_and_row_sums(chunk):
    a, _ = lower_dense(25, 4)
    adj = CsrAdjacency.of(a.to_sparse_coo())
    seen = torch.zeros_like(a)
    for c in adj.chunks(3, 20):
        assert c.rows.numel() <= max(chunk, int(adj.counts.max()))
        seen[c.rows, c.cols.long()] = c.values
    want = torch.zeros_like(a)
    want[3:20] = a[3:20]
    assert torch.equal(seen, want)
    torch.testing.assert_close(adj.row_abs_sums, a.abs().sum(1), rtol=1e-14, atol=0)
    assert adj.values.min() < 0  # the passes did not take |A| in place


def dense_paths(b: torch.Tensor, seed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """yᵀ = seedᵀ B (I - diag(scale) B)⁻¹, the closed form of y[s] = Σ_t (scale[t] y[t] + seed[t]) B[t, s]."""
    eye = torch.eye(len(b), dtype=torch.float64)
    return seed @ b @ torch.linalg.inv(eye - scale[:, None] * b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_influence_levels_series_and_dense_agree(chunk, seed):
    attr = random_attribution(n_layers=3, n_pos=6, seed=seed, dtype=torch.float64)
    adj, lay = attr.adjacency, attr.layout
    w = logit_weights(lay, attr.logit_probs)
    a = adj.to_dense()
    rs = a.abs().sum(1).clamp_min(1e-10)
    want = dense_paths(a.abs(), w / rs, 1 / rs)
    assert want.abs().sum() > 0
    by_levels, by_series = influence(adj, w, lay.levels()), influence(adj, w)
    torch.testing.assert_close(by_levels, want, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(by_series, want, rtol=1e-10, atol=1e-13)
    edges = Edges.of(a.to_sparse_coo())  # the edge-list series pruning used before CSR
    torch.testing.assert_close(by_levels, influence_series(edges, normalized(edges), w), rtol=1e-12, atol=1e-15)


def test_wrong_levels_fall_back_to_the_series():
    attr = random_attribution(n_layers=3, n_pos=5, seed=5, dtype=torch.float64)
    lay, w = attr.layout, logit_weights(attr.layout, attr.logit_probs)
    backwards = list(reversed(lay.levels()))  # sources before their targets: detected, not silently wrong
    torch.testing.assert_close(influence(attr.adjacency, w, backwards), influence(attr.adjacency, w))


def test_signed_paths_equal_dense_inverse(chunk):
    attr = random_attribution(n_layers=3, n_pos=5, seed=6, dtype=torch.float64)
    a, lay = attr.adjacency.to_dense(), attr.layout
    g = torch.Generator().manual_seed(0)
    seed, scale = torch.randn(len(a), generator=g, dtype=torch.float64), torch.rand(len(a), generator=g) + 0.5
    want = dense_paths(a, seed, scale.double())
    torch.testing.assert_close(paths(attr.adjacency, seed, scale, lay.levels()), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(paths(attr.adjacency, seed, scale), want, rtol=1e-10, atol=1e-12)


def test_cycle_and_nonfinite_are_refused():
    a = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    with pytest.raises(GraphFileError, match="cycle"):
        influence(CsrAdjacency.of(a), torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(GraphFileError, match="NaN"):
        influence(CsrAdjacency.of(torch.tensor([[0.0, 0.0], [float("nan"), 0.0]])), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("sources", [slice(0, 25), slice(5, 12), slice(7, 7), slice(20, 40), slice(30, 40)])
def test_abs_sums_from_a_column_range_equal_the_masked_row_sums(chunk, sources):
    """The runs of each row's entries in the range, summed alone, give the bits of the masked sum over whole rows."""
    a, _ = lower_dense(25, 7)
    adj = CsrAdjacency.of(a.to_sparse_coo())
    want = torch.zeros(adj.n, dtype=torch.float64)
    for c in adj.chunks():
        cols = c.cols.long()
        v = c.values.abs() * ((cols >= sources.start) & (cols < sources.stop))
        want.index_add_(0, c.rows, v)  # entries in column order, as a row's segment sum adds them
    assert torch.equal(adj.abs_sums_from(sources), want)
    assert torch.equal(adj.abs_sums_from(slice(0, adj.n)), adj.row_abs_sums)
    starts = adj.first_col_at_least(sources.start)
    for r in range(adj.n):
        got = adj.col[int(adj.crow[r]) : int(starts[r])]
        assert bool((got < sources.start).all()) and bool((adj.col[int(starts[r]) : int(adj.crow[r + 1])]
                                                          >= sources.start).all())  # fmt: skip

