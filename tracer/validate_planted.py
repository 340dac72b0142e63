"""`python -m tracer.validate_planted`: how well the default model's graphs predict ablations, on the planted tasks.

1. Prompts: the first --per-task held-out prompts of every planted task (tracer/assets/planted_heldout.json).
2. For each: trace (default settings), prune (0.8 / 0.98), ablate the pruned graph's top --top features by
   influence in --mode and compare with the graph's predictions (tracer.validate.planted_validation).
3. Print mean Spearman(signed total effect, measured) and Spearman(influence, |measured|), per task too; --json
   prints everything, -o writes it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

HELDOUT = Path(__file__).resolve().parent / "assets" / "planted_heldout.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tracer.validate_planted", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--per-task", type=int, default=5, help="held-out prompts per planted task")
    ap.add_argument("--top", type=int, default=20, help="features ablated per graph, by influence")
    ap.add_argument("--mode", choices=["replacement", "free"], default="replacement", help="how ablations run")
    ap.add_argument("--model", type=Path, help="model directory (default: bundled model)")
    ap.add_argument("--transcoders", type=Path, help="transcoder directory (default: bundled CLT)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--json", action="store_true", help="print the full result as JSON")
    ap.add_argument("-o", "--output", type=Path, help="also write the full result as JSON here")
    args = ap.parse_args(argv)
    import torch

    from tracer.io import atomic_write_text
    from tracer.models import load_model
    from tracer.validate import planted_validation
    from tracer.validate_cli import _finite
    from transcoders import DEFAULT_TRANSCODERS, load_transcoders

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = load_model(args.model)
    tc = load_transcoders(args.transcoders or DEFAULT_TRANSCODERS, lm.cfg, dtype=lm.model.embed.weight.dtype)
    by_task: dict[str, list[dict]] = {}
    for p in json.loads(HELDOUT.read_text()):
        by_task.setdefault(p["task"], []).append(p)
    prompts = [p for task in sorted(by_task) for p in by_task[task][: args.per_task]]
    t0 = time.perf_counter()
    v = planted_validation(lm.model, tc, lm.tokenizer, prompts, top=args.top, mode=args.mode, progress=not args.json)
    result = asdict(v) | {"mode": args.mode, "top": args.top, "threads": args.threads, "model": lm.name,
                          "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    text = json.dumps(_finite(result))
    if args.output:
        atomic_write_text(args.output, text)
    if args.json:
        print(text)
        return 0
    print(f"{v.n_prompts} planted prompts ({args.per_task} per task), top {args.top} features, {args.mode} mode, "
          f"{args.threads} thread(s), {result['seconds']} s")  # fmt: skip
    print(f"Spearman(signed total effect, measured ablation): {v.spearman_signed:.3f}")
    print(f"Spearman(influence, |measured ablation|): {v.spearman_influence:.3f} "
          f"(target influence: {v.spearman_target_influence:.3f})")  # fmt: skip
    print(f"sign agreement {v.sign_agreement:.3f}; completeness (target logit surviving outside-graph ablation) "
          f"{v.completeness_surviving:.3f}; top-1 = planted answer in {v.top1_is_answer:.0%}")  # fmt: skip
    print("per task (signed): " + ", ".join(f"{t} {s:.2f}" for t, s in v.per_task.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
