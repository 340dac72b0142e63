"""`tracer trace`: prompt -> pruned attribution graph file, with a printed (or JSON) summary.

1. Load: model (default: bundled) and transcoders (default: bundled CLT), checked against each other.
2. Tokenize: BOS first; empty or over-long prompts are rejected.
3. Attribute (tracer.attribute), 4. prune (tracer.prune), 5. write the graph file + sidecar (atomic).
6. Report: top logits, node/edge counts before and after pruning, scores, phase times, output path.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tracer.precision import add_precision_args

# torch and everything that imports it are imported inside run (the "imports" phase): `tracer --help` stays fast

DEFAULT_OUT_DIR = Path("out/graphs")


@dataclass
class TraceSummary:
    prompt: str
    output: str
    top_logits: list[dict]
    nodes_unpruned: int
    edges_unpruned: int
    nodes_pruned: int
    edges_pruned: int
    replacement_score: float
    completeness_score: float
    timings: dict[str, float]
    stats: dict[str, float]
    top_features: list[dict] = field(default_factory=list)  # most influential features with their labels


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="trace a prompt into an attribution graph file")
    p.add_argument("prompt", nargs="?", help="text to trace (a BOS token is prepended)")
    p.add_argument("--prompts", type=Path, help="JSONL file of {\"prompt\": ...} lines: trace each into -o DIR, "
                   "with DIR/index.json (resumable; shards over torchrun ranks)")  # fmt: skip
    p.add_argument("--model", type=Path, help="HF-layout model directory, .gguf file, or a Hugging Face name such as "
                   "google/gemma-2-2b in the local HF cache (default: bundled model)")  # fmt: skip
    p.add_argument("--transcoders", type=Path, help="transcoder directory, circuit-tracer short name (gemma, llama, "
                   "qwen3-4b, ...) or HF repository in the local cache (default: bundled CLT)")  # fmt: skip
    p.add_argument("-o", "--output", type=Path, help="graph file to write (default: out/graphs/<prompt>.json)")
    p.add_argument("--batch-size", type=int, default=128, help="targets per backward pass")
    p.add_argument("--max-feature-nodes", type=int,
                   help="features that get rows, most influential first (default: all)")  # fmt: skip
    p.add_argument("--max-n-logits", type=int, default=10, help="most logit targets")
    p.add_argument("--desired-logit-prob", type=float, default=0.95, help="probability mass of the logit targets")
    p.add_argument("--target", action="append", help="custom logit target token, e.g. ' Paris' (repeatable)")
    p.add_argument("--minus", help="with one --target: attribute the logit difference target - minus")
    p.add_argument("--edge-topk", type=int, help="keep each row's K largest |edges| (default: exact)")
    p.add_argument("--node-threshold", type=float, default=0.8, help="share of influence the kept nodes cover")
    p.add_argument("--edge-threshold", type=float, default=0.98, help="share of edge score the kept edges cover")
    p.add_argument("--kernel", choices=["auto", "torch", "triton"], help="edge kernel backend (env TRACER_KERNEL)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    add_precision_args(p)
    p.add_argument("--row-dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="dtype of the row phase (backward + edge kernel): bf16 is faster on CPUs with AVX512-BF16/AMX "
                   "(rows 1.8-2.0x faster, README), edges ~0.5%% off; fp32 is exact; auto: bf16 with --dtype bf16, "
                   "else fp32")
    p.add_argument("--no-sidecar", action="store_true",
                   help="write only the pruned graph (no NAME.adjacency.safetensors: no re-pruning or slider)")
    p.add_argument("--sidecar-dtype", choices=["fp32", "fp16"], default="fp32",
                   help="edge values in the sidecar: fp16 makes it 6 instead of 8 bytes per edge")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--view", action="store_true", help="open the graph in the viewer afterwards")
    p.set_defaults(func=run)


def slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower()[:48] or "graph"


def process_seconds() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere): interpreter start and imports."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return float(Path("/proc/uptime").read_text().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


@contextmanager
def quiet_imports() -> Iterator[None]:
    """The imports phase without cyclic garbage collection: torch and pydantic create ~10⁵ long-lived objects that
    every full collection would scan again (~0.1-0.2 s here); afterwards they are frozen out of later collections
    (gc.freeze) and collection is on. Only in a fresh process (torch not yet imported): a caller that runs the CLI
    in-process (tests, notebooks) keeps its own objects collectable."""
    fresh = "torch" not in sys.modules
    gc.disable()
    try:
        yield
    finally:
        if fresh:
            gc.freeze()
        gc.enable()


def run(args: argparse.Namespace) -> int:
    t: dict[str, float] = {"imports": process_seconds()}
    t0 = time.perf_counter()
    with quiet_imports():
        import torch

        from tracer.attribute import phase
        from tracer.checks import check_graph_output, check_threads, check_thresholds
        from tracer.graphfile import recover_pair
        from tracer.pipeline import Tracer

    t["imports"] += time.perf_counter() - t0
    # cheap checks first (a batch too): a bad threshold or output must not cost a whole trace
    check_thresholds(args.node_threshold, args.edge_threshold)
    check_threads(args.threads)
    if args.prompts is not None or args.prompt is None:
        from tracer.batch import run_batch

        return run_batch(args)
    out = args.output or DEFAULT_OUT_DIR / f"{slug(args.prompt)}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    check_graph_output(out)
    recover_pair(out)  # leftovers of a killed run to the same output
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Tracer.from_args(args, progress=not args.json)
    t |= pipe.timings
    graph, attr = pipe.trace_to(out, args.prompt, t)
    summary = _summary(args.prompt, out, attr, graph, t)
    with phase("free", t):  # the unpruned graph's memory goes back before the summary is printed
        del attr, pipe
    summary.timings["free"] = round(t["free"], 4)
    summary.timings["total"] = round(process_seconds() or sum(t.values()), 4)
    print(json.dumps(asdict(summary)) if args.json else _format(summary))
    if args.view:
        from viewer.app import serve

        serve(out)
    return 0


def _summary(prompt, out, attr, graph, t) -> TraceSummary:
    from tracer.features.graph_labels import top_features

    pairs = zip(attr.logit_strs, attr.logit_probs, strict=True)
    top = [{"token": s, "probability": round(float(p), 6)} for s, p in pairs]
    m = graph.metadata
    return TraceSummary(
        prompt=prompt, output=str(out), top_logits=top, nodes_unpruned=m.n_nodes_unpruned,
        edges_unpruned=m.n_edges_unpruned, nodes_pruned=len(graph.nodes), edges_pruned=len(graph.edges),
        replacement_score=m.scores.replacement, completeness_score=m.scores.completeness,
        timings={k: round(v, 4) for k, v in t.items()}, stats=attr.stats, top_features=top_features(graph),
    )  # fmt: skip


def _format(s: TraceSummary) -> str:
    from tracer.features.graph_labels import format_top_features

    lines = [f"prompt: {s.prompt!r}", "top logits: " + ", ".join(f"{d['token']!r} {d['probability']:.3f}"
                                                                  for d in s.top_logits)]  # fmt: skip
    lines += [
        f"nodes: {s.nodes_unpruned} -> {s.nodes_pruned} after pruning; edges: {s.edges_unpruned} -> {s.edges_pruned}",
        f"scores: replacement {s.replacement_score:.3f}, completeness {s.completeness_score:.3f}",
        "time: " + ", ".join(f"{k} {v:.2f}s" for k, v in s.timings.items()),
        *format_top_features(s.top_features),
        f"graph: {s.output}",
        f"view it: tracer view {s.output}",
    ]
    return "\n".join(lines)
