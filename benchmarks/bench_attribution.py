"""Attribution speed and memory, measured in one run (each case in a fresh child process for a clean peak RSS).

1. Matmul rate: a 2048x2048 fp32 matmul's GFLOP/s in the same process, same threads.
2. Trace: `tracer.attribute.attribute` on a seeded prompt; wall time per phase; peak RSS above the loaded model.
3. Rate of the row phases: their counted matmul GFLOP / seconds, next to the matmul rate.
4. Baseline: the autograd way (benchmarks/autograd_baseline.py: whole-prompt forward + backward per batch, as
   circuit-tracer does) on the same targets — all batches for short prompts, the first `--baseline-batches` otherwise
   (then scaled by rows); its rows are compared with ours (max |diff| / max |edge|).
Usage: python benchmarks/bench_attribution.py [--subject anchor|wide|default] [--tokens 16 64 ...] [--out FILE.json]

With --whole, the whole `tracer trace` pipeline instead, each case in a fresh process (as the command runs):
5. Phases: imports, load (the subject), the attribution phases, prune, graph_file (build_graph_file), write (as
   `tracer trace`: the sidecar's writer thread starts after attribution, beside prune and graph_file; write is
   the time to start it plus the wait for it, the JSON and the renames), free; total = the process's wall time
   from its start, less step 6's comparison. Peak RSS (VmHWM) of the process; sidecar bytes per edge;
   attribution = the attribution phases' sum (record .. check). Bytecode caches are made current first (as after
   any install or first run: imports are timed as a user's are, not with our modules compiled each time).
6. fp32 and bf16 rows (--row-dtype) at every length: the bf16 case compares its edges with the fp32 case's sidecar
   (max |error| / max |edge|, relative Frobenius error) and its pruned node set with fp32's (Jaccard).
7. Threads: the fp32 row phase again with 2 threads at --threads-tokens.
Usage: python benchmarks/bench_attribution.py --whole [--tokens 16 64 128 256] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

gc.disable()  # as `tracer trace` imports torch (tracer.trace_cli.quiet_imports); back on in main / run_whole
import torch  # noqa: E402

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
    from benchmarks.subjects import SUBJECTS
    from tracer.attribute import RowBuilder, TraceConfig, _feature_injections, attribute
    from tracer.record import record

    torch.manual_seed(0)
    pair = SUBJECTS[subject]()
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


def run_whole(subject: str, n_tokens: int, row_dtype: str, work: Path, compare: Path | None) -> dict:
    """One whole-pipeline case (module docstring, steps 5-6), in this fresh process."""
    from tracer.trace_cli import process_seconds, quiet_imports

    t = {"imports": process_seconds()}
    t0 = time.perf_counter()
    with quiet_imports():
        from tracer.attribute import TraceConfig, attribute, phase
        from tracer.graphfile import build_graph_file, load_attribution, sidecar_path
        from tracer.models import load_model
        from tracer.pair import start_save
        from tracer.prune import prune
        from tracer.schema import Identity
        from transcoders import load_transcoders

        # quiet_imports freezes only in a fresh process, and torch came in above: freeze here, as `tracer trace` does
        # (else later collections rescan torch's objects: ~0.08 s after the imports, ~0.1 s in graph_file)
        gc.freeze()
    t["imports"] += time.perf_counter() - t0
    with phase("load", t):  # from disk, as `tracer trace` loads
        model = load_model(work / "model").model
        tc = load_transcoders(work / "clt", model.cfg, dtype=torch.float32)
        gen = torch.Generator().manual_seed(n_tokens)
        tokens = torch.randint(3, model.cfg.vocab_size, (n_tokens,), generator=gen)
        tokens[0] = model.cfg.bos_token_id or 0
    attr = attribute(model, tc, tokens, None, TraceConfig(row_dtype=row_dtype))
    attribution_s = sum(attr.timings.values())
    t |= attr.timings
    out = work / f"{subject}-{n_tokens}-{row_dtype}.json"
    t0 = time.perf_counter()
    pending = start_save(out, attr)  # as tracer.pipeline.Tracer.trace_to: the sidecar's writer runs from here on
    started = time.perf_counter() - t0
    with phase("prune", t):
        res = prune(attr)
    ident = Identity(name=subject, content_hash="-", kind="bench")
    with phase("graph_file", t):
        graph = build_graph_file(attr, res, prompt="bench", model=ident, transcoders=ident, settings={})
    t["write"] = started
    with phase("write", t):
        pending.finish(graph)
    nnz, mask = attr.adjacency.nnz, res.node_mask
    result = {"subject": subject, "tokens": n_tokens, "row_dtype": row_dtype, "threads": torch.get_num_threads(),
              "features": int(attr.layout.features.shape[0]), "edges": nnz,
              "rows_gflop": attr.stats["rows_gflop"], "pruned_nodes": int(mask.sum()),
              "sidecar_bytes_per_edge": sidecar_path(out).stat().st_size / max(nnz, 1)}  # fmt: skip
    peak_rss = _rss_mb("VmHWM")  # before the comparison loads the fp32 graph
    compare_s = 0.0
    if compare is not None:  # 6. (not part of `tracer trace`: timed apart and left out of total)
        c0 = time.perf_counter()
        ref = load_attribution(compare)
        max_err, sq_err = _edge_error(ref.adjacency, attr.adjacency)
        a = ref.adjacency.values
        result |= {"max_err_over_max_edge": max_err / float(a.abs().max()),
                   "rel_frobenius_err": (sq_err / float(a.double().square().sum())) ** 0.5,
                   "edges_fp32_minus_bf16": ref.adjacency.nnz - attr.adjacency.nnz}  # fmt: skip
        ref_mask = prune(ref).node_mask
        result["jaccard_pruned_nodes_vs_fp32"] = float((ref_mask & mask).sum() / (ref_mask | mask).sum())
        compare_s = time.perf_counter() - c0
    with phase("free", t):
        del attr, res, graph, model, tc
    t["total"] = process_seconds() - compare_s
    return result | {"phases_s": t, "attribution_s": attribution_s, "peak_rss_mb": peak_rss, "compare_s": compare_s}


def _edge_error(a, b, rows: int = 64) -> tuple[float, float]:
    """(max |A - B|, Σ (A - B)²) of two CSR adjacencies on the union of their patterns (an edge rounded to 0 in bf16
    is missing from B), a few dense rows at a time."""
    worst, sq = 0.0, 0.0
    for r0 in range(0, a.n, rows):
        r1 = min(r0 + rows, a.n)
        block = torch.zeros(r1 - r0, a.n, dtype=torch.float64)
        for m, sign in ((a, 1.0), (b, -1.0)):
            e0, e1 = int(m.crow[r0]), int(m.crow[r1])
            rr = torch.repeat_interleave(torch.arange(r1 - r0), m.crow[r0 : r1 + 1].diff())
            block[rr, m.col[e0:e1].long()] += sign * m.values[e0:e1].double()
        worst, sq = max(worst, float(block.abs().max())), sq + float(block.square().sum())
    return worst, sq


def whole_main(a: argparse.Namespace) -> None:
    """Steps 5-7: every case in a fresh child process, niced like the rest of the machine's users."""
    import compileall
    import tempfile

    from benchmarks.subjects import SUBJECTS
    from tracer.models import save_hf
    from transcoders import save_transcoders

    root = Path(__file__).resolve().parent.parent
    for pkg in ("tracer", "transcoders", "kernels"):  # step 5: written even under PYTHONDONTWRITEBYTECODE
        compileall.compile_dir(root / pkg, quiet=1)
    torch.manual_seed(0)
    pair = SUBJECTS[a.subject]()
    if pair is None:
        raise SystemExit("default model or CLT not built")
    results = []
    with tempfile.TemporaryDirectory() as work:
        save_hf(pair[0].cfg, pair[0].state_dict(), Path(work) / "model")
        save_transcoders(pair[1].float(), Path(work) / "clt")
        cases = [(n, dt, 1) for n in a.tokens for dt in ("fp32", "bf16")]
        cases += [(a.threads_tokens, "fp32", 2)] if a.threads_tokens else []
        for n, dt, threads in cases:
            cmd = [sys.executable, __file__, "--whole-case", a.subject, str(n), dt, work, "--threads", str(threads)]
            if dt == "bf16":
                cmd += ["--compare", str(Path(work) / f"{a.subject}-{n}-fp32.json")]
            results.append(_case(cmd, _whole_row))
    if a.out:
        a.out.write_text(json.dumps(results, indent=2))


def _case(cmd: list[str], row) -> dict:
    """Run one case in a fresh process; its last stdout line is the result as JSON, printed with `row`."""
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    print(row(r), flush=True)
    return r


def _whole_row(r: dict) -> str:
    if "error" in r:
        return r["error"]
    p = r["phases_s"]
    rows = p["logit_rows"] + p["feature_rows"]
    post = p["assemble"] + p["prune"] + p["graph_file"] + p["write"]
    cmp = (f"  err max {r['max_err_over_max_edge']:.1e} frob {r['rel_frobenius_err']:.1e} "
           f"jaccard {r['jaccard_pruned_nodes_vs_fp32']:.3f}" if "rel_frobenius_err" in r else "")  # fmt: skip
    return (f"{r['tokens']:4d} tok {r['row_dtype']} {r['threads']}t edges {r['edges']:9d}  rows {rows:7.2f}s  "
            f"assemble+prune+graph+write {post:6.2f}s ({post / rows:5.1%} of rows)  attribution "
            f"{r['attribution_s']:7.2f}s  total {p['total']:7.2f}s (x{p['total'] / r['attribution_s']:.2f})  "
            f"imports {p['imports']:.2f}s load {p['load']:.2f}s free {p['free']:.2f}s unaccounted "
            f"{p['total'] - sum(v for k, v in p.items() if k != 'total'):.2f}s  peak RSS {r['peak_rss_mb']:6.0f} MB  "
            f"sidecar {r['sidecar_bytes_per_edge']:.2f} B/edge" + cmp)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--subject", default="anchor", choices=["anchor", "wide", "default"])
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 128, 256, 512])
    ap.add_argument("--max-feature-nodes", type=int, help="rows for features, most influential first")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline-batches", type=int, default=2, help="0: skip the autograd baseline")
    ap.add_argument("--edge-topk", type=int, help="keep each row's K largest |edges|")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # child mode: subject n_tokens
    ap.add_argument("--whole", action="store_true", help="the whole trace pipeline, fp32 and bf16 (steps 5-7)")
    ap.add_argument("--threads-tokens", type=int, default=64,
                    help="--whole: prompt length of the 2-thread case (0: none)")
    ap.add_argument("--whole-case", nargs=4, help=argparse.SUPPRESS)  # child: subject n_tokens row_dtype workdir
    ap.add_argument("--compare", type=Path, help=argparse.SUPPRESS)  # child: the fp32 graph to compare with
    a = ap.parse_args()
    if not a.whole_case:  # a whole case turns it back on after its imports, as `tracer trace` does
        gc.enable()
    if a.whole:
        return whole_main(a)
    torch.set_num_threads(a.threads)
    if a.whole_case:
        subject, n, dt, work = a.whole_case
        print(json.dumps(run_whole(subject, int(n), dt, Path(work), a.compare)))
        return
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
        results.append(_case(cmd, _row))
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
