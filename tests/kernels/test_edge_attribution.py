"""Edge-attribution kernels vs a naive per-element loop: torch reference (all groupings), Triton (interpreter)."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: it reads this at @triton.jit

import importlib.util

import pytest
import torch

import kernels.dispatch as dispatch
from kernels import ENV_VAR, KernelBackend, edge_attribution, plan_edges, resolve_backend
from kernels.reference import ONE_PER_POSITION, SPLIT_ALL, GroupCost, TorchEdgePlan, merge_spans, plan_edges_torch
from tracer.errors import ConfigError

HAS_TRITON = importlib.util.find_spec("triton") is not None
NEEDS_TRITON = pytest.mark.skipif(not HAS_TRITON, reason="triton not importable")
CPU = torch.device("cpu")

SHAPES = [(3, 2, 5, 7, 11), (1, 4, 9, 33, 65), (2, 3, 4, 5, 0), (4, 3, 6, 16, 40)]  # (B, L, P, D, N)
KINDS = ["clt", "plt", "dirty"]  # dirty: non-zero rows below the feature's layer, which must be ignored
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def make_case(shape, kind: str, dtype: torch.dtype, seed: int = 0):
    """Seeded grads [B, L, P, D] and features (dec [N, L, D], layer, pos, act) of a given decoder kind."""
    n_batch, n_layers, n_pos, d, n = shape
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(n_batch, n_layers, n_pos, d, generator=gen, dtype=dtype)
    layer = torch.randint(0, n_layers, (n,), generator=gen)
    pos = torch.randint(0, n_pos, (n,), generator=gen)
    dec = torch.randn(n, n_layers, d, generator=gen, dtype=dtype)
    l_L = torch.arange(n_layers)
    if kind == "clt":
        dec = dec * (l_L >= layer[:, None])[..., None]
    elif kind == "plt":
        dec = dec * (l_L == layer[:, None])[..., None]
    if n > 2:
        dec[1] = 0.0  # a feature whose decoder is all zero: no span, zero column
    act = torch.rand(n, generator=gen, dtype=dtype) + 0.1
    return grads, dec, layer, pos, act


def naive(grads, dec, layer, pos, act):
    """The contract, one feature and output layer at a time; grads may cover fewer layers/positions."""
    n_batch, n_lay, n_pos, _ = grads.shape
    out = torch.zeros(n_batch, dec.shape[0], dtype=grads.dtype)
    for n in range(dec.shape[0]):
        for out_l in range(int(layer[n]), n_lay):
            if int(pos[n]) < n_pos:
                out[:, n] += act[n] * (grads[:, out_l, int(pos[n])] * dec[n, out_l]).sum(-1)
    return out


def assert_close(out, ref):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if ref.numel():
        scale = max(1.0, ref.abs().max().item())
        assert (out - ref).abs().max().item() <= TOL[ref.dtype] * scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cost", [SPLIT_ALL, GroupCost(), ONE_PER_POSITION], ids=["split", "default", "per_pos"])
def test_torch_matches_naive(shape, kind, dtype, cost):
    grads, dec, layer, pos, act = make_case(shape, kind, dtype)
    plan = plan_edges_torch(dec, layer, pos, act, cost)
    assert_close(plan.attribute(grads), naive(grads, dec, layer, pos, act))


@pytest.mark.parametrize("quantum", [3, 16])
@pytest.mark.parametrize("kind", KINDS)
def test_padded_groups_match_naive(kind, quantum):
    """Groups padded with zero rows (bf16's default, ROW_QUANTUM) give the same rows: every group's matmul has a
    row count that is a multiple of the quantum, and no feature lands in a padding row."""
    grads, dec, layer, pos, act = make_case((3, 4, 9, 12, 50), kind, torch.float64, seed=3)
    dec[::7] = 0  # spanless features sort after the padded groups
    plan = plan_edges_torch(dec, layer, pos, act, quantum=quantum)
    assert all((g.end - g.start) % quantum == 0 for g in plan.groups) and plan.n_rows > plan.n_features
    assert len(set(plan.inverse_N.tolist())) == plan.n_features and int(plan.inverse_N.max()) < plan.n_rows
    assert_close(plan.attribute(grads), naive(grads, dec, layer, pos, act))
    for n_lay in range(4):  # grads below the top layer: each group's matmul covers only its features below n_lay
        part = grads[:, :n_lay]
        assert_close(plan.attribute(part), naive(part, dec, layer, pos, act))
    assert plan_edges_torch(dec.bfloat16(), layer, pos, act.bfloat16()).groups[0].dec_scaled.shape[0] % 16 == 0


@pytest.mark.parametrize("cost", [SPLIT_ALL, GroupCost(), ONE_PER_POSITION], ids=["split", "default", "per_pos"])
def test_group_rows_below_each_layer(cost):
    """A group's rows are sorted by layer, and below[l] counts its features under layer l: the rows a batch whose
    gradients stop at layer l must multiply (the others are zero without a matmul)."""
    _, dec, layer, pos, act = make_case((1, 5, 7, 8, 90), "clt", torch.float64, seed=4)
    plan = plan_edges_torch(dec, layer, pos, act, cost)
    slot_layer = torch.full((plan.n_rows,), 99)
    slot_layer[plan.inverse_N] = layer
    for g in plan.groups:
        rows = slot_layer[g.start : g.end]
        real = rows[rows < 99]
        assert torch.equal(real, real.sort().values)
        assert list(g.below) == [int((real < lay).sum()) for lay in range(6)]
    mixed = sum(len(set(g.below[1:-1]) - {0, g.below[-1]}) > 0 for g in plan.groups)
    assert (mixed == 0) if cost is SPLIT_ALL else (mixed > 0)  # merged groups hold several layers' features


@pytest.mark.parametrize("kind", KINDS)
def test_torch_grads_layouts_and_truncation(kind):
    """Fast [B, P, L, D] layout, a strided non-mergeable layout, and grads covering fewer layers/positions."""
    grads, dec, layer, pos, act = make_case((3, 4, 9, 12, 50), kind, torch.float64, seed=1)
    plan = plan_edges_torch(dec, layer, pos, act)
    ref = naive(grads, dec, layer, pos, act)
    assert_close(plan.attribute(grads.transpose(1, 2).contiguous().transpose(1, 2)), ref)
    wide = torch.randn(3, 4, 9, 24, dtype=torch.float64)
    wide[..., ::2] = grads
    assert_close(plan.attribute(wide[..., ::2]), ref)  # D stride 2: per-position copy path
    for n_lay, n_pos in [(2, 9), (4, 5), (1, 1), (0, 9), (4, 0)]:
        part = grads[:, :n_lay, :n_pos]
        assert_close(plan.attribute(part), naive(part, dec, layer, pos, act))


@pytest.mark.parametrize("quantum", [1, 16])
@pytest.mark.parametrize("sort", [True, False], ids=["position-sorted", "any-order"])
def test_out_prefix_into_strided_rows(quantum, sort):
    """out_BN: the first N' features' columns written into a row-strided block (the caller's dense rows) equal the
    full result's, whether those features keep their order in the plan (a copy) or not (a gather first)."""
    grads, dec, layer, pos, act = make_case((3, 4, 9, 12, 50), "clt", torch.float64, seed=5)
    if sort:
        order = torch.argsort(pos * 4 + layer, stable=True)
        dec, layer, pos, act = dec[order], layer[order], pos[order], act[order]
    plan = plan_edges_torch(dec, layer, pos, act, quantum=quantum)
    if sort and quantum == 1:  # in order up to the one all-zero decoder (make_case), which sorts last in the plan
        assert plan.in_order == int((dec.abs().sum((1, 2)) == 0).nonzero()[0, 0]) < 50
    for n_pos, n_lay in [(9, 4), (5, 3), (1, 2)]:
        part = grads[:, :n_lay, :n_pos]
        want = naive(part, dec, layer, pos, act)
        n_read = int((pos < n_pos).sum()) if sort else 50
        rows = torch.full((3, 60), 7.0, dtype=torch.float64)
        got = plan.attribute(part, rows[:, :n_read])
        assert got.data_ptr() == rows.data_ptr()
        assert_close(rows[:, :n_read], want[:, :n_read])
        assert bool((rows[:, n_read:] == 7.0).all())  # nothing written past the block
        if sort:
            assert bool((want[:, n_read:] == 0).all())  # the features left out read no gradient of this batch
    with pytest.raises(ConfigError, match="out_BN"):
        plan.attribute(grads, torch.zeros(3, 51, dtype=torch.float64))
    with pytest.raises(ConfigError, match="contiguous"):
        plan.attribute(grads, torch.zeros(50, 3, dtype=torch.float64).T)


def test_plan_is_reusable_and_zero_decoder_column_is_zero():
    grads, dec, layer, pos, act = make_case((2, 3, 6, 8, 30), "clt", torch.float64, seed=2)
    plan = plan_edges(dec, layer, pos, act, backend=KernelBackend.TORCH)
    assert isinstance(plan, TorchEdgePlan)
    for seed in (3, 4):
        other = torch.randn(grads.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        out = plan.attribute(other)
        assert_close(out, naive(other, dec, layer, pos, act))
        assert out[:, 1].abs().max().item() == 0.0


@pytest.mark.parametrize("backend", [KernelBackend.TORCH, pytest.param(KernelBackend.TRITON, marks=NEEDS_TRITON)])
def test_inputs_requiring_grad(backend):
    """Activations/gradients straight out of autograd still work; the result is a plain tensor."""
    grads, dec, layer, pos, act = make_case((2, 3, 4, 6, 9), "clt", torch.float64, seed=6)
    ref = naive(grads, dec, layer, pos, act)
    out = edge_attribution(grads.requires_grad_(), dec, layer, pos, act.requires_grad_(), backend=backend)
    assert not out.requires_grad
    assert_close(out, ref)


def test_merge_spans_hand_computed():
    spans = [(0, 4, 10), (1, 4, 10)]  # (lo, hi, rows)
    assert merge_spans(spans, SPLIT_ALL) == [(0, 1), (1, 2)]  # split 10*4 + 10*3 = 70 < merged 20*4 = 80
    assert merge_spans(spans, GroupCost(100.0, 0.0)) == [(0, 2)]  # split 110*4 + 110*3 = 770 > 120*4 = 480
    plt = [(0, 1, 5), (1, 2, 5), (2, 3, 5)]
    assert merge_spans(plt, GroupCost(5.0, 0.0)) == [(0, 1), (1, 2), (2, 3)]  # 3 * (5+5) * 1 = 30 < (15+5) * 3
    assert merge_spans(plt, GroupCost(5.0, 30.0)) == [(0, 3)]  # split 120, two runs 100, merged 60 + 30 = 90
    clt = [(0, 4, 1), (1, 4, 1), (2, 4, 30)]
    assert merge_spans(clt, SPLIT_ALL) == [(0, 1), (1, 2), (2, 3)]
    assert merge_spans(clt, GroupCost(0.0, 5.0)) == [(0, 2), (2, 3)]  # 2*4+5 + 30*2+5 = 78; split 82; merged 133


@NEEDS_TRITON
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_torch(shape, kind, dtype):
    grads, dec, layer, pos, act = make_case(shape, kind, dtype)
    out = edge_attribution(grads, dec, layer, pos, act, backend=KernelBackend.TRITON)
    assert_close(out, edge_attribution(grads, dec, layer, pos, act, backend=KernelBackend.TORCH))


@NEEDS_TRITON
def test_triton_out_prefix():
    """out_BN on the Triton plan: its first N' columns copied into a row-strided block, nothing past it."""
    grads, dec, layer, pos, act = make_case((2, 3, 4, 8, 20), "clt", torch.float32, seed=7)
    rows = torch.full((2, 30), 7.0)
    got = plan_edges(dec, layer, pos, act, backend=KernelBackend.TRITON).attribute(grads, rows[:, :12])
    assert got.data_ptr() == rows.data_ptr() and bool((rows[:, 12:] == 7.0).all())
    assert_close(rows[:, :12], naive(grads, dec, layer, pos, act)[:, :12])


@NEEDS_TRITON
def test_triton_strided_and_truncated_grads():
    grads, dec, layer, pos, act = make_case((2, 3, 7, 40, 37), "clt", torch.float32, seed=5)
    plan = plan_edges(dec, layer, pos, act, backend=KernelBackend.TRITON)
    assert_close(plan.attribute(grads.transpose(1, 2).contiguous().transpose(1, 2)), naive(grads, dec, layer, pos, act))
    part = grads[:, :2, :4]
    assert_close(plan.attribute(part), naive(part, dec, layer, pos, act))


def test_dispatch_env_override(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend(None, CPU) is KernelBackend.TORCH  # auto on CPU
    monkeypatch.setenv(ENV_VAR, "torch")
    assert resolve_backend(KernelBackend.AUTO, CPU) is KernelBackend.TORCH
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ConfigError, match="TRACER_KERNEL"):
        resolve_backend(None, CPU)
    assert resolve_backend("torch", CPU) is KernelBackend.TORCH  # an explicit argument wins over the env
    with pytest.raises(ConfigError, match="unknown kernel backend"):
        resolve_backend("cuda", CPU)
    monkeypatch.setenv(ENV_VAR, "auto")
    assert resolve_backend(None, CPU) is KernelBackend.TORCH


def test_dispatch_triton_errors(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(ConfigError, match="not installed"):
        resolve_backend(None, CPU)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        resolve_backend(None, CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend(None, CPU) is KernelBackend.TRITON
    assert resolve_backend(None, torch.device("cuda")) is KernelBackend.TRITON


@NEEDS_TRITON
def test_env_selects_triton_plan(monkeypatch):
    from kernels.triton_edge import TritonEdgePlan

    monkeypatch.setenv(ENV_VAR, "triton")
    _, dec, layer, pos, act = make_case((1, 2, 3, 4, 5), "clt", torch.float64)
    assert isinstance(plan_edges(dec, layer, pos, act), TritonEdgePlan)


def test_bad_inputs_raise_config_error():
    grads, dec, layer, pos, act = make_case((2, 3, 4, 5, 6), "clt", torch.float64)
    bad = [
        (grads, dec, layer + 3, pos, act),  # layer out of range
        (grads, dec, layer, pos - 10, act),  # negative position
        (grads, dec, layer, pos, act.float()),  # act dtype differs
        (grads, dec, layer[:-1], pos, act),  # N mismatch
        (grads, dec, layer.double(), pos, act),  # float layer indices
        (grads[..., :4], dec, layer, pos, act),  # D mismatch
        (torch.zeros(2, 4, 4, 5, dtype=torch.float64), dec, layer, pos, act),  # more grad layers than decoders
        (grads.float(), dec, layer, pos, act),  # grads dtype differs
        (grads[0], dec, layer, pos, act),  # grads not 4-D
    ]
    for args in bad:
        with pytest.raises(ConfigError):
            edge_attribution(*args, backend=KernelBackend.TORCH)
