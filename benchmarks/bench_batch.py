"""Many prompts, many processes: batch-tracing throughput and CLT training tokens/s on 1 and on 2 ranks.

1. prompts: --prompts distinct short prompts (templated sentences of the bundled model's corpus style).
2. trace: `tracer trace --prompts FILE -o DIR` in one process, then under `torchrun --nproc-per-node 2`, each rank
   with --threads torch threads; graphs/min end to end (process start, model load, tracing, index) and for the
   tracing alone (the slowest rank's sum of per-prompt seconds from index.json). The two runs must write the same
   graphs (checked on node and edge ids).
3. train: `tracer transcoders train` for --train-tokens tokens in one process and under torchrun with 2 data-parallel
   ranks (same global batch); tokens/s from each run's training.json (harvest included).
Every run is a subprocess (niced when --nice), one after another, in the order 1, 2, 2, 1 ranks (a shared machine's
load drifts). Prints every run's figures; --out writes JSON.

Run: .venv/bin/python benchmarks/bench_batch.py [--prompts 12 --threads 1 --train-tokens 32768 --out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Canada", "Brazil", "Peru", "Kenya", "Chile",
            "Norway", "Greece", "India", "China", "Mexico"]  # fmt: skip
TEMPLATES = ["The capital of {} is", "The largest city in {} is", "People in {} speak"]
ORDER = (1, 2, 2, 1)  # interleaved, so a change in the machine's load over the runs hits both alike


def _prompts(n: int) -> list[str]:
    return [TEMPLATES[i % len(TEMPLATES)].format(SUBJECTS[i // len(TEMPLATES) % len(SUBJECTS)]) for i in range(n)]


def _run(cmd: list[str], threads: int, nice: bool) -> float:
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    full = (["nice", "-n", "10"] if nice else []) + cmd
    t0 = time.perf_counter()
    proc = subprocess.run(full, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]


def trace(tmp: Path, n_prompts: int, threads: int, nice: bool) -> dict:
    """Step 2."""
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in _prompts(n_prompts)))
    out: dict = {1: [], 2: []}
    for k, ranks in enumerate(ORDER):
        d = tmp / f"graphs{ranks}-{k}"
        args = ["-m", "tracer", "trace", "--prompts", str(prompts), "-o", str(d), "--threads", str(threads), "--json"]
        wall = _run(([sys.executable] if ranks == 1 else _torchrun(ranks)) + args, threads, nice)
        index = json.loads((d / "index.json").read_text())
        per_rank = [sum(e["seconds"] for k, e in enumerate(index["entries"]) if k % ranks == r) for r in range(ranks)]
        out[ranks].append({"wall_s": wall, "graphs_per_min": 60 * n_prompts / wall, "dir": d.name,
                           "tracing_graphs_per_min": 60 * n_prompts / max(per_rank),
                           "tokens_per_prompt": _tokens(d, index)})  # fmt: skip
    one, two = tmp / out[1][0]["dir"], tmp / out[2][0]["dir"]
    same = all(_ids(one / e["file"]) == _ids(two / e["file"])
               for e in json.loads((one / "index.json").read_text())["entries"])  # fmt: skip
    return {"runs": out, "same_graphs": same}


def _ids(path: Path) -> tuple:
    g = json.loads(path.read_text())
    return sorted(n["id"] for n in g["nodes"]), sorted((e["source"], e["target"]) for e in g["edges"])


def _tokens(d: Path, index: dict) -> float:
    lens = [len(json.loads((d / e["file"]).read_text())["metadata"]["tokens"]) for e in index["entries"]]
    return sum(lens) / len(lens)


def train(tmp: Path, tokens: int, threads: int, nice: bool) -> dict:
    """Step 3."""
    out: dict = {1: [], 2: []}
    for k, ranks in enumerate(ORDER):
        d = tmp / f"clt{ranks}-{k}"
        args = ["-m", "tracer", "transcoders", "train", "--out", str(d), "--tokens", str(tokens), "--batch-tokens",
                "512", "--buffer-tokens", "8192", "--features", "1024", "--seq-len", "64", "--threads", str(threads),
                "--no-progress", "--checkpoint-every", "100000"]  # fmt: skip
        wall = _run(([sys.executable] if ranks == 1 else _torchrun(ranks)) + args, threads, nice)
        info = json.loads((d / "training.json").read_text())
        out[ranks].append({"wall_s": wall, "tokens_per_s": info["tokens_per_s"], "steps": info["steps"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--prompts", type=int, default=12, help="prompts to trace")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--train-tokens", type=int, default=32768, help="training tokens per run (0: skip training)")
    ap.add_argument("--nice", action=argparse.BooleanOptionalAction, default=True, help="run the jobs niced")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "threads_per_process": args.threads, "prompts": args.prompts,
               "trace": trace(tmp, args.prompts, args.threads, args.nice)}  # fmt: skip
        if args.train_tokens:
            res["train"] = train(tmp, args.train_tokens, args.threads, args.nice)
    tr = res["trace"]["runs"]
    runs = lambda rows, key, f: " / ".join(format(r[key], f) for r in rows)  # noqa: E731
    print(f"default model, {args.prompts} prompts of {tr[1][0]['tokens_per_prompt']:.1f} tokens (BOS incl.), "
          f"{args.threads} thread(s) per process, {res['machine']}; runs in the order {ORDER}")  # fmt: skip
    print("processes  graphs/min end to end (each run)  graphs/min tracing only (each run)")
    for r in (1, 2):
        print(f"{r:>9}  {runs(tr[r], 'graphs_per_min', '.1f'):>34}  {runs(tr[r], 'tracing_graphs_per_min', '.1f'):>35}")
    print(f"same graphs on 1 and 2 processes: {res['trace']['same_graphs']}")
    if "train" in res:
        t = res["train"]
        print("ranks  training tokens/s (each run)  wall s (each run)")
        for r in (1, 2):
            print(f"{r:>5}  {runs(t[r], 'tokens_per_s', ',.0f'):>28}  {runs(t[r], 'wall_s', '.1f'):>17}")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
