"""Intervention benchmark on the default model: what one intervention, a steered continuation and the viewer's
Intervene panel cost, as multiples of one plain forward pass measured in the same run.

1. setup: the bundled model and CLT (fp32), one prompt, its graph traced and saved to a temp folder.
2. time (median of --repeats, after a warm-up): a plain forward pass; record; intervene in each mode (ablating the
   graph's 3 most influential features); generate --tokens plain, and steered in replacement and free mode; the
   viewer panel's handler (viewer.intervene.handle_intervene: intervene + both continuations, steered in free mode).
3. print a table of milliseconds and ratios to the forward pass; --out writes JSON. Goal (issue 9): the panel
   answers in <= 1 s on the default model.

Run: .venv/bin/python benchmarks/bench_intervene.py [--prompt "The opposite of hot is"] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # our `kernels`, not a same-named installed package


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--prompt", default="The opposite of hot is")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=5, help="tokens generated (the viewer panel generates 5)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from tracer.cli import main as cli
    from tracer.graphfile import load_graph
    from tracer.interventions import FeatureRef, Intervention, Mode, intervene
    from tracer.layout import NodeKind
    from tracer.record import record
    from tracer.steering import GenerateConfig, generate
    from viewer.data import GraphStore
    from viewer.handlers import Env
    from viewer.intervene import MODELS, handle_intervene
    from viewer.state import UrlState, to_query

    folder = Path(tempfile.mkdtemp(prefix="bench-intervene-"))
    cli(["trace", args.prompt, "-o", str(folder / "g.json"), "--json", "--threads", str(args.threads)])
    graph = load_graph(folder / "g.json")
    nodes = sorted((n for n in graph.nodes if n.kind is NodeKind.FEATURE), key=lambda n: -n.influence)[:3]
    lm, tc, _ = MODELS.get()
    tokens = torch.tensor(graph.metadata.token_ids)
    ivs = [Intervention.ablate(*(FeatureRef(n.layer, n.feature or 0, n.pos) for n in nodes))]
    cfg = GenerateConfig(n_tokens=args.tokens)
    env = Env(GraphStore(folder))
    search = "?" + to_query(UrlState(graph="g.json", pinned=tuple(n.id for n in nodes)))
    with torch.inference_mode(False), torch.no_grad():
        rows = {"forward": timed(lambda: lm.model(tokens[None]), args.repeats),
                "record": timed(lambda: record(lm.model, tc, tokens), args.repeats)}  # fmt: skip
        for mode in Mode:
            rows[f"intervene {mode.value}"] = timed(lambda m=mode: intervene(lm.model, tc, tokens, ivs, m),
                                                    args.repeats)  # fmt: skip
        rows[f"generate {args.tokens} plain"] = timed(lambda: generate(lm.model, tc, tokens.tolist(), [], cfg),
                                                      args.repeats)  # fmt: skip
        for mode in (Mode.REPLACEMENT, Mode.FREE):
            c = GenerateConfig(n_tokens=args.tokens, mode=mode)
            rows[f"generate {args.tokens} {mode.value}"] = timed(
                lambda c=c: generate(lm.model, tc, tokens.tolist(), ivs, c), args.repeats)  # fmt: skip
        rows["viewer panel"] = timed(lambda: handle_intervene(env, search, [], "ablate", None), args.repeats)
    base = rows["forward"]
    print(f"{args.prompt!r}: {len(tokens)} tokens, {args.threads} thread(s), median of {args.repeats}")
    for name, ms in rows.items():
        print(f"  {name:<24} {ms:9.1f} ms  {ms / base:7.1f} x forward")
    print(f"viewer panel goal <= 1000 ms: {'met' if rows['viewer panel'] <= 1000 else 'NOT met'}")
    if args.out:
        args.out.write_text(json.dumps({"prompt": args.prompt, "threads": args.threads, "ms": rows}, indent=1))


if __name__ == "__main__":
    main()
