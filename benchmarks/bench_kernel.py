"""Benchmark of the edge-attribution kernel variants against a plain matmul, in one process.

1. Setup: seed, set threads, measure a 2048^2 fp32 matmul (the machine's matmul rate in this process).
2. For each (kind, P, D, N) with B=128, L=4: seeded gradients and CLT- or PLT-style features (positions drawn with
   uneven per-position rates, BOS position 0 excluded, as after recording).
3. Time, best of --repeats rounds in which the variants take turns (after one warm-up each): the dense matmul of
   the same nominal work ([B, L*D] @ [L*D, N]), plan building, the default plan on gradients in the fast
   [B, P, L, D] layout and in contiguous [B, L, P, D], one-group-per-position and one-group-per-span plans, a padded
   batched matmul, the Triton kernel when CUDA is available (never on this CPU-only machine), and, timed once, the
   naive gather (small N only).
4. Print a table (ms, GFLOP/s of the nominal 2*B*N*L*D work, % of the same-shape matmul); write JSON to --out.

    python benchmarks/bench_kernel.py --out out/bench_kernel.json [--threads 1] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from kernels.reference import ONE_PER_POSITION, SPLIT_ALL, plan_edges_torch
from tracer.io import atomic_write_text

B, L = 128, 4
GRID = [(p, d, n) for p in (64, 256) for d in (128, 256) for n in (1024, 4096, 16384)]
QUICK_GRID = [(64, 128, 1024), (256, 256, 16384)]
NAIVE_MAX_N = 1024  # the naive gather moves B*L*N*D floats: seconds per call beyond this


class Kind(enum.StrEnum):
    CLT = "clt"  # decoder rows on every output layer >= the feature's layer
    PLT = "plt"  # decoder row on the feature's own layer only


def timed(variants: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Phase 3: milliseconds per call of each variant after one warm-up each; the variants take turns in every
    round, so that a shared machine's changing load hits them alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def make_case(kind: Kind, n_pos: int, d: int, n: int, device: torch.device, seed: int = 0):
    """Phase 2: grads stored [B, P, L, D] (returned as its [B, L, P, D] view) and seeded features."""
    gen = torch.Generator().manual_seed(seed)
    grads_BLPD = torch.randn(B, n_pos, L, d, generator=gen).transpose(1, 2)
    rate_P = torch.distributions.Gamma(2.0, 1.0).sample((n_pos,))
    rate_P[0] = 0.0
    pos_N = torch.multinomial(rate_P, n, replacement=True, generator=gen)
    layer_N = torch.randint(0, L, (n,), generator=gen)
    l_L = torch.arange(L)
    keep_NL = (l_L >= layer_N[:, None]) if kind is Kind.CLT else (l_L == layer_N[:, None])
    dec_NLD = torch.randn(n, L, d, generator=gen) * keep_NL[..., None] / math.sqrt(d)
    act_N = torch.rand(n, generator=gen)
    return [t.to(device) for t in (grads_BLPD, dec_NLD, layer_N, pos_N, act_N)]


def padded_bmm(grads_BLPD: Tensor, dec_NLD: Tensor, layer_N: Tensor, pos_N: Tensor, act_N: Tensor):
    """Variant: features padded to the busiest position, one [P, B, L*D] @ [P, L*D, n_max] batched matmul."""
    n, n_layers, d = dec_NLD.shape
    n_pos = grads_BLPD.shape[2]
    keep_NL = torch.arange(n_layers, device=dec_NLD.device) >= layer_N[:, None]
    order = torch.argsort(pos_N, stable=True)
    counts = torch.bincount(pos_N, minlength=n_pos)
    slot_sorted = torch.arange(n, device=pos_N.device) - (torch.cumsum(counts, 0) - counts)[pos_N[order]]
    slot = torch.empty_like(slot_sorted)
    slot[order] = slot_sorted
    padded = dec_NLD.new_zeros(n_pos, int(counts.max()), n_layers * d)
    padded[pos_N, slot] = (dec_NLD * keep_NL[..., None] * act_N[:, None, None]).reshape(n, -1)

    def run() -> Tensor:
        grads_PBK = grads_BLPD.permute(2, 0, 1, 3).reshape(n_pos, grads_BLPD.shape[0], -1)
        return torch.bmm(grads_PBK, padded.transpose(1, 2))[pos_N, :, slot].T

    return run


def naive_gather(grads_BLPD: Tensor, dec_NLD: Tensor, layer_N: Tensor, pos_N: Tensor, act_N: Tensor) -> Tensor:
    """Variant: materialise each feature's gradients [B, L, n, D] and contract (what the plan avoids)."""
    keep_NL = torch.arange(dec_NLD.shape[1], device=dec_NLD.device) >= layer_N[:, None]
    dec_NLD = dec_NLD * keep_NL[..., None]
    out = []
    for s in range(0, len(pos_N), 256):
        g_BLnD = grads_BLPD[:, :, pos_N[s : s + 256]]
        out.append(torch.einsum("blnd,nld->bn", g_BLnD, dec_NLD[s : s + 256]) * act_N[s : s + 256])
    return torch.cat(out, dim=1) if out else grads_BLPD.new_zeros(grads_BLPD.shape[0], 0)


def check(out: object, ref: Tensor, name: str) -> None:
    if not (isinstance(out, Tensor) and torch.allclose(out, ref, rtol=1e-4, atol=1e-4)):
        raise AssertionError(f"variant {name!r} disagrees with the plan")


def bench_case(kind: Kind, n_pos: int, d: int, n: int, repeats: int, device: torch.device) -> list[dict]:
    """Phase 3 for one shape: one JSON row per variant."""
    grads, dec, layer, pos, act = make_case(kind, n_pos, d, n, device)
    flops = 2.0 * B * n * L * d
    a_BK, b_KN = torch.randn(B, L * d, device=device), torch.randn(L * d, n, device=device)
    plan = plan_edges_torch(dec, layer, pos, act)
    blpd = grads.contiguous()
    variants: dict[str, Callable[[], object]] = {
        "matmul (same work)": lambda: a_BK @ b_KN,
        "plan build (once)": lambda: plan_edges_torch(dec, layer, pos, act),
        "plan [B,P,L,D] grads": lambda: plan.attribute(grads),
        "plan [B,L,P,D] grads": lambda: plan.attribute(blpd),
    }
    for name, cost in (("group per position", ONE_PER_POSITION), ("group per span", SPLIT_ALL)):
        other = plan_edges_torch(dec, layer, pos, act, cost)
        variants[name] = lambda other=other: other.attribute(grads)
    variants["padded bmm"] = padded_bmm(grads, dec, layer, pos, act)
    if device.type == "cuda":
        from kernels.triton_edge import plan_edges_triton

        tplan = plan_edges_triton(dec, layer, pos, act)
        variants["triton"] = lambda: tplan.attribute(grads)
    ref = plan.attribute(grads)
    for name, fn in variants.items():
        if name not in ("matmul (same work)", "plan build (once)"):
            check(fn(), ref, name)
    times = timed(variants, repeats, device)
    if n <= NAIVE_MAX_N:  # seconds per call: one timed call outside the rounds, checked too
        t0 = time.perf_counter()
        check(naive_gather(grads, dec, layer, pos, act), ref, "naive gather")
        times["naive gather"] = [(time.perf_counter() - t0) * 1e3]
    rows = []
    for name, ms in times.items():
        best, median = min(ms), statistics.median(ms)
        rows.append(dict(kind=kind.value, B=B, L=L, P=n_pos, D=d, N=n, variant=name, ms=best, median_ms=median))
    mm = rows[0]["ms"]
    for r in rows:
        is_work = r["variant"] != "plan build (once)"
        r["gflops"] = flops / r["ms"] / 1e6 if is_work else None
        r["pct_of_matmul"] = 100.0 * mm / r["ms"] if is_work else None
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file for the results (written atomically)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared: default 1)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds; each variant's best is reported")
    ap.add_argument("--quick", action="store_true", help="two shapes only (smoke run)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sq = torch.randn(2048, 2048, device=device)
    sq_ms = min(timed({"square": lambda: sq @ sq}, args.repeats, device)["square"])
    square_gflops = 2 * 2048**3 / sq_ms / 1e6
    print(f"device {device}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    print(f"2048^2 fp32 matmul: {square_gflops:.1f} GFLOP/s")
    print(f"{'kind':4} {'P':>4} {'D':>4} {'N':>6}  {'variant':22} {'ms':>9} {'GFLOP/s':>8} {'%mm':>5}")
    rows: list[dict] = []
    for kind in Kind:
        for n_pos, d, n in QUICK_GRID if args.quick else GRID:
            for r in bench_case(kind, n_pos, d, n, args.repeats, device):
                gf = f"{r['gflops']:8.1f} {r['pct_of_matmul']:5.0f}" if r["gflops"] is not None else ""
                print(f"{r['kind']:4} {n_pos:4} {d:4} {n:6}  {r['variant']:22} {r['ms']:9.2f} {gf}", flush=True)
                rows.append(r)
    meta = dict(
        device=str(device), threads=args.threads, repeats=args.repeats, torch=torch.__version__,
        machine=platform.machine(), square_matmul_gflops=square_gflops, loadavg_1min_at_end=os.getloadavg()[0],
        triton="benchmarked" if device.type == "cuda" else "skipped: no CUDA device",
    )  # fmt: skip
    atomic_write_text(args.out, json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
