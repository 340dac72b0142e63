"""CLT vs per-layer transcoders (PLT) on the default model's planted tasks: path length, graph size, replacement.

The paper's claim: a cross-layer transcoder lets one feature write to every later layer, so amplification chains
(the same quantity re-derived layer after layer) collapse into one feature and paths get shorter.

Algorithm:
1. load: the default model, the CLT (default: the bundled one) and a PLT set trained on the same model
   (`python -m tracer.bundle clt --clt-kind plt --clt-dir DIR`); the first --per-task held-out prompts of each
   multi-step task that the model answers correctly (the same prompts for both).
2. trace: `tracer.attribute.attribute` with the answer as the one target, once per transcoder set.
3. measure, per graph:
   - replacement / completeness of the unpruned graph (tracer.scores);
   - path length: Â = row-normalised |A|; influence mass starts at the target and flows down Â until it lands on a
     source node (token embedding or error); the mean number of edges travelled (all mass, and the mass that ends
     on token embeddings alone);
   - size at equal completeness: the fewest features, taken in order of influence, whose graph (the others folded
     into the error nodes, as pruning does) reaches completeness --completeness, or all features if it is never
     reached (reported as the share of graphs that reach it).
4. report: per transcoder set, means over the graphs; `--json` prints one object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

from tracer.bundle.planted import Task

TASKS = (Task.FACTS, Task.TWO_HOP, Task.IOI, Task.OPPOSITES)


class PathLengths(NamedTuple):
    all: float  # mean edges travelled by all influence mass from the target to a source
    tokens: float  # the same for the mass that ends on token embeddings


class Size(NamedTuple):
    features: int  # fewest features (by influence) reaching the completeness asked for (all when never)
    reached: bool


def path_lengths(attr) -> PathLengths:
    """Step 3: mean path length over all mass and over the mass that ends on token embeddings."""
    from tracer.layout import NodeKind

    lay = attr.layout
    a = attr.adjacency.to_dense().abs().double()  # prompts of a few dozen tokens: a few thousand nodes
    sums = a.sum(1, keepdim=True)
    ahat = torch.where(sums > 0, a / sums.clamp_min(1e-30), 0.0)
    emb = lay.mask(NodeKind.EMBEDDING)
    source = emb | lay.mask(NodeKind.ERROR)
    v = torch.zeros(lay.n_nodes, dtype=torch.float64)
    v[lay.logit_rows()[0]] = 1.0
    total = tok = total_k = tok_k = 0.0
    for k in range(1, 4 * lay.n_pos * (lay.n_layers + 2)):
        v = v @ ahat
        landed = v * source
        total += float(landed.sum())
        total_k += k * float(landed.sum())
        tok += float(landed[emb].sum())
        tok_k += k * float(landed[emb].sum())
        v = v * ~source
        if float(v.sum()) < 1e-9:
            break
    return PathLengths(total_k / max(total, 1e-30), tok_k / max(tok, 1e-30))


def size_at(attr, target: float) -> Size:
    """Step 3: fewest features (by influence) whose folded graph reaches completeness `target` (binary search)."""
    from tracer.csr import influence
    from tracer.layout import NodeKind
    from tracer.prune import logit_weights
    from tracer.scores import graph_scores

    lay = attr.layout
    w = logit_weights(lay, attr.logit_probs)
    infl = influence(attr.adjacency, w, lay.levels())
    feats = lay.feature_rows()
    order = feats[infl[feats].argsort(descending=True)]
    always = ~lay.mask(NodeKind.FEATURE)

    def complete(k: int) -> float:
        keep = always.clone()
        keep[order[:k]] = True
        return graph_scores(attr.adjacency, lay, attr.logit_probs, keep_mask=keep).completeness

    lo, hi = 0, len(order)
    if complete(hi) < target:
        return Size(hi, False)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if complete(mid) < target else (lo, mid)
    return Size(lo, True)


def run(args: argparse.Namespace) -> dict:
    from tracer.attribute import TraceConfig, attribute
    from tracer.bundle.evaluate import top1
    from tracer.layout import NodeKind
    from tracer.models import DEFAULT_MODEL, load_model
    from tracer.scores import graph_scores
    from transcoders import DEFAULT_TRANSCODERS, load_transcoders

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    tok = lm.tokenizer
    assert tok is not None
    sets = {"clt": args.clt or DEFAULT_TRANSCODERS, "plt": args.plt}
    tcs = {k: load_transcoders(p, lm.cfg, dtype=torch.float32) for k, p in sets.items()}
    items = json.loads((args.heldout or DEFAULT_MODEL.parent / "planted_heldout.json").read_text())
    prompts = []  # (task, prompt, answer token id)
    for task in TASKS:
        pool = [(it["prompt"], tok.encode(it["answer"])[0]) for it in items if it["task"] == task.value]
        ok = top1(lm, [p for p, _ in pool])
        prompts += [(task, p, a) for (p, a), got in zip(pool, ok, strict=True) if got == a][: args.per_task]
    rows: dict[str, list[dict]] = {k: [] for k in tcs}
    for task, prompt, answer in prompts:
        tokens = torch.tensor(tok.encode_prompt(prompt, lm.cfg.n_ctx, lm.cfg.bos_token_id))
        cfg = TraceConfig(target=(tok.token_str(answer),))
        for name, tc in tcs.items():
            attr = attribute(lm.model, tc, tokens, tok, cfg)
            s = graph_scores(attr.adjacency, attr.layout, attr.logit_probs)
            lengths, size = path_lengths(attr), size_at(attr, args.completeness)
            rows[name].append({"task": task.value, "replacement": s.replacement, "completeness": s.completeness,
                               "path_len": lengths.all, "token_path_len": lengths.tokens, "features": size.features,
                               "reached": size.reached, "active": attr.layout.count(NodeKind.FEATURE)})  # fmt: skip
    return {name: _means(r) | {"graphs": len(r)} for name, r in rows.items()} | {
        "completeness_target": args.completeness, "prompts": len(prompts)}  # fmt: skip


def _means(rows: list[dict]) -> dict:
    keys = ("replacement", "completeness", "path_len", "token_path_len", "features", "active")
    out = {k: round(sum(r[k] for r in rows) / max(len(rows), 1), 4) for k in keys}
    out["reached"] = round(sum(r["reached"] for r in rows) / max(len(rows), 1), 4)
    return out


def table(res: dict, seconds: float) -> str:
    cols = ("replacement", "completeness", "path_len", "token_path_len", "features", "reached", "active")
    lines = [f"{'set':<5}" + "".join(f"{c:>16}" for c in cols)]
    for name in ("clt", "plt"):
        lines.append(f"{name:<5}" + "".join(f"{res[name][c]:>16.3f}" for c in cols))
    lines.append(f"{res['prompts']} prompts; features = fewest (by influence) reaching completeness "
                 f"{res['completeness_target']}; active = active features per graph; {seconds:.0f} s")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.clt_vs_plt", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--plt", type=Path, required=True, help="per-layer transcoder directory to compare")
    ap.add_argument("--clt", type=Path, default=None, help="CLT directory (default: the bundled CLT)")
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled model)")
    ap.add_argument("--heldout", type=Path, default=None, help="held-out prompts (default: the bundled file)")
    ap.add_argument("--per-task", type=int, default=10, help="correctly answered prompts per task")
    ap.add_argument("--completeness", type=float, default=0.9, help="completeness the size comparison asks for")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    if not 0 < args.completeness <= 1 or args.per_task < 1:
        ap.error("--completeness must be in (0, 1] and --per-task >= 1")
    from tracer.errors import TracerError

    t0 = time.time()
    try:
        res = run(args)
    except TracerError as e:  # a missing or mismatched model/transcoder directory
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # it writes nothing but its final report
        print("error: interrupted", file=sys.stderr)
        return 2
    print(json.dumps(res) if args.json else table(res, time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
