"""Attribution speed and memory, measured in one run (each case in a fresh child process for a clean peak RSS).

1. Matmul rate: a 2048x2048 fp32 matmul's GFLOP/s in the same process, same threads.
2. Trace: `tracer.attribute.attribute` on a seeded prompt; wall time per phase; peak RSS above the loaded model.
3. Rate of the row phases: their counted matmul GFLOP / seconds, next to the matmul rate.
4. Baseline: the autograd way (benchmarks/autograd_baseline.py: whole-prompt forward + backward per batch, as
   circuit-tracer does) on the same targets — all batches for short prompts, the first `--baseline-batches` otherwise
   (then scaled by rows); its rows are compared with ours (max |diff| / max |edge|).
Usage: python benchmarks/bench_attribution.py [--subject anchor|default] [--tokens 16 64 ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def run_case(subject: str, n_tokens: int, max_feature_nodes: int | None, batch: int, baseline_batches: int,
             edge_topk: int | None = None) -> dict:  # fmt: skip
    from benchmarks.autograd_baseline import autograd_grads
    from benchmarks.subjects import anchor_subject, default_subject
    from tracer.attribute import RowBuilder, TraceConfig, _feature_injections, attribute
    from tracer.record import record

    torch.manual_seed(0)
    if subject == "anchor":
        model, tc = anchor_subject()
    else:
        pair = default_subject()
        if pair is None:
            return {"error": "default model or CLT not built"}
        model, tc = pair
    gen = torch.Generator().manual_seed(n_tokens)
    tokens = torch.randint(3, model.cfg.vocab_size, (n_tokens,), generator=gen)
    tokens[0] = model.cfg.bos_token_id or 0
    rate = matmul_gflops()
    base_rss = _rss_mb("VmRSS")
    cfg = TraceConfig(batch_size=batch, max_feature_nodes=max_feature_nodes, edge_topk=edge_topk)
    t0 = time.perf_counter()
    attr = attribute(model, tc, tokens, None, cfg)
    wall = time.perf_counter() - t0
    peak = _rss_mb("VmHWM")
    rows_s = attr.timings["logit_rows"] + attr.timings["feature_rows"]
    out = {
        "subject": subject, "tokens": n_tokens, "max_feature_nodes": max_feature_nodes, "batch": batch,
        "threads": torch.get_num_threads(), "edge_topk": edge_topk, "features": int(attr.layout.features.shape[0]),
        "edges": int(attr.adjacency.nnz), "wall_s": wall, "phases_s": attr.timings,
        "peak_rss_above_model_mb": peak - base_rss, "rows_gflop": attr.stats["rows_gflop"],
        "rows_gflops_per_s": attr.stats["rows_gflop"] / rows_s, "matmul_gflops_per_s": rate,
    }  # fmt: skip
    if baseline_batches == 0:
        return out
    # 4. Baseline on the same feature targets
    rec = record(model, tc, tokens)
    builder = RowBuilder(model, tc, rec, attr.layout, cfg)
    feats = rec.features
    order = torch.arange(len(feats)).split(batch)
    n_b = len(order) if n_tokens <= 16 else min(baseline_batches, len(order))
    A = attr.adjacency.to_sparse_csr()
    t0, worst, scale = time.perf_counter(), 0.0, 0.0
    for idx in order[:n_b]:
        inj = _feature_injections(tc, feats, idx)
        grads, emb = autograd_grads(model, tc, rec, inj)
        fe = builder.plan.attribute(grads)
        err = torch.einsum("blpd,pld->blp", grads, builder.errors_PLD)
        tok = torch.einsum("bpd,pd->bp", emb, builder.embed_PD)
        rows = attr.layout.source_rows(fe, err, tok)
        ours = torch.stack([A[int(r)].to_dense() for r in attr.layout.feature_rows(idx)])
        worst = max(worst, float((rows - ours).abs().max()))
        scale = max(scale, float(ours.abs().max()))
    base_s = (time.perf_counter() - t0) * len(feats) / max(1, sum(len(i) for i in order[:n_b]))
    out |= {"baseline_feature_rows_s": base_s, "baseline_extrapolated": n_b < len(order),
            "speedup_feature_rows": base_s / attr.timings["feature_rows"],
            "max_rel_diff_vs_baseline": worst / max(scale, 1e-30)}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", default="anchor", choices=["anchor", "default"])
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 128, 256, 512])
    ap.add_argument("--max-feature-nodes", type=int, help="rows for features, most influential first")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline-batches", type=int, default=2, help="0: skip the autograd baseline")
    ap.add_argument("--edge-topk", type=int, help="keep each row's K largest |edges|")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # child mode: subject n_tokens
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.case:
        res = run_case(a.case[0], int(a.case[1]), a.max_feature_nodes, a.batch, a.baseline_batches, a.edge_topk)
        print(json.dumps(res))
        return
    results = []
    for n in a.tokens:
        cmd = [sys.executable, __file__, "--case", a.subject, str(n), "--batch", str(a.batch),
               "--threads", str(a.threads), "--baseline-batches", str(a.baseline_batches)]  # fmt: skip
        if a.max_feature_nodes:
            cmd += ["--max-feature-nodes", str(a.max_feature_nodes)]
        if a.edge_topk:
            cmd += ["--edge-topk", str(a.edge_topk)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        results.append(res)
        print(_row(res), flush=True)
    if a.out:
        a.out.write_text(json.dumps(results, indent=2))


def _row(r: dict) -> str:
    if "error" in r:
        return r["error"]
    return (f"{r['subject']:8s} {r['tokens']:5d} tok  feats {r['features']:6d}  wall {r['wall_s']:7.2f}s  "
            f"rows {r['rows_gflops_per_s']:6.1f} GF/s (matmul {r['matmul_gflops_per_s']:6.1f})  "
            f"+RSS {r['peak_rss_above_model_mb']:7.0f} MB" + (f"  autograd x{r['speedup_feature_rows']:5.1f}  "
            f"diff {r['max_rel_diff_vs_baseline']:.1e}" if "speedup_feature_rows" in r else ""))  # fmt: skip


if __name__ == "__main__":
    main()
