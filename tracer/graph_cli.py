"""`tracer prune` and `tracer export`: work on saved graph files, without re-tracing.

prune: 0. cheap checks (thresholds, output, sidecar present) before the graph is parsed, once;
       1. re-prune from the graph's unpruned sidecar at the new thresholds (view state and labels kept);
       2. write the graph (in place, or to -o together with a copy of the sidecar); 3. print a summary (--json: one
       JSON object).
export: 1. load the graph (and its sidecar when present, for exact cumulative influence);
        2. write it as Neuronpedia JSON into a directory, or as GraphML.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from tracer.errors import GraphFileError

# modules that import torch are imported inside the run functions: `tracer --help` stays fast
EXPORT_FORMATS = ("neuronpedia", "graphml")  # tracer.export.ExportFormat's values

REF_SCAN_BYTES = 1 << 16  # metadata precedes nodes in our JSON: its adjacency_file is in the first bytes


@dataclass
class PruneSummary:
    output: str
    node_threshold: float
    edge_threshold: float
    nodes_unpruned: int
    edges_unpruned: int
    nodes_before: int
    edges_before: int
    nodes_after: int
    edges_after: int
    replacement_score: float
    completeness_score: float
    pruned_replacement_score: float | None
    pruned_completeness_score: float | None
    prune_seconds: float


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="re-prune a graph file at new thresholds (no re-trace)")
    p.add_argument("graph", type=Path, help="graph file (NAME.json, with NAME.adjacency.safetensors beside it)")
    p.add_argument("--node-threshold", type=float, default=0.8, help="share of influence the kept nodes cover")
    p.add_argument("--edge-threshold", type=float, default=0.98, help="share of edge score the kept edges cover")
    p.add_argument("--rank-by", choices=["influence", "target-influence", "signed-effect"], default="influence",
                   help="node score the node threshold sorts: influence on all logit targets (probability-weighted), "
                        "on the primary target alone, or |signed total effect| on it")  # fmt: skip
    p.add_argument("-o", "--output", type=Path, help="graph file to write (default: overwrite GRAPH)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run_prune)

    e = sub.add_parser("export", help="export a graph file to Neuronpedia JSON or GraphML")
    e.add_argument("graph", type=Path, help="graph file to export")
    e.add_argument("--to", choices=EXPORT_FORMATS, required=True,
                   help="neuronpedia: a folder with SLUG.json, graph-metadata.json; graphml: a file")  # fmt: skip
    e.add_argument("-o", "--output", type=Path, required=True, help="directory (neuronpedia) or file (graphml)")
    e.add_argument("--slug", help="Neuronpedia graph name (default: from the prompt)")
    e.add_argument("--scan", help="Neuronpedia scan, i.e. transcoder set name (default: the graph's transcoders)")
    e.set_defaults(func=run_export)


def _check_sidecar_present(graph: Path) -> None:
    """Before parsing a big graph: its sidecar must exist, by the usual name or the name its metadata records."""
    from tracer.graphfile import sidecar_path

    if not graph.is_file():
        raise GraphFileError(f"graph file not found: {graph}")
    if sidecar_path(graph).exists():
        return
    try:
        with open(graph, "rb") as f:
            head = f.read(REF_SCAN_BYTES).decode("utf-8", "replace")
    except OSError as e:
        raise GraphFileError(f"cannot read graph file {graph}: {e.strerror}") from None
    ref = re.search(r'"adjacency_file"\s*:\s*"([^"/\\]+)"', head)
    if ref is None or not (graph.parent / ref.group(1)).is_file():
        raise GraphFileError(f"adjacency sidecar not found: {sidecar_path(graph)} (re-pruning needs it; re-run "
                             "`tracer trace` to create it)")  # fmt: skip


def run_prune(args: argparse.Namespace) -> int:
    from tracer.checks import check_graph_output, check_thresholds
    from tracer.graphfile import load_attribution, load_graph, recover_pair, reprune_loaded, save_graph
    from tracer.io import check_output

    # 0. cheap preconditions: thresholds, output, sidecar present; then each file is read once
    check_thresholds(args.node_threshold, args.edge_threshold)
    out = args.output or args.graph
    same = out.resolve() == args.graph.resolve()
    check_output(out, "graph file") if same else check_graph_output(out)
    _check_sidecar_present(args.graph)
    recover_pair(args.graph)
    old = load_graph(args.graph)
    attribution = load_attribution(args.graph, old)
    new = reprune_loaded(old, attribution, node_threshold=args.node_threshold, edge_threshold=args.edge_threshold,
                         rank_by=args.rank_by)  # fmt: skip
    save_graph(out, new, None if same else attribution)
    m = new.metadata
    ps = m.pruned_scores
    s = PruneSummary(
        output=str(out), node_threshold=args.node_threshold, edge_threshold=args.edge_threshold,
        nodes_unpruned=m.n_nodes_unpruned, edges_unpruned=m.n_edges_unpruned, nodes_before=len(old.nodes),
        edges_before=len(old.edges), nodes_after=len(new.nodes), edges_after=len(new.edges),
        replacement_score=m.scores.replacement, completeness_score=m.scores.completeness,
        pruned_replacement_score=ps.replacement if ps else None,
        pruned_completeness_score=ps.completeness if ps else None,
        prune_seconds=round(m.timings.get("prune", 0.0), 4),
    )  # fmt: skip
    print(json.dumps(asdict(s)) if args.json else _format(s))
    return 0


def _format(s: PruneSummary) -> str:
    pruned = ("" if s.pruned_replacement_score is None else
              f"; pruned graph {s.pruned_replacement_score:.3f} / {s.pruned_completeness_score:.3f}")  # fmt: skip
    return "\n".join([
        f"thresholds: node {s.node_threshold}, edge {s.edge_threshold}",
        f"nodes: {s.nodes_unpruned} unpruned, {s.nodes_before} -> {s.nodes_after}; "
        f"edges: {s.edges_unpruned} unpruned, {s.edges_before} -> {s.edges_after}",
        f"scores (replacement / completeness): unpruned {s.replacement_score:.3f} / {s.completeness_score:.3f}{pruned}",
        f"graph: {s.output}",
    ])  # fmt: skip


def run_export(args: argparse.Namespace) -> int:
    from tracer.export import ExportFormat, write_graphml, write_neuronpedia
    from tracer.graphfile import load_attribution, load_graph, sidecar_path
    from tracer.io import check_output, check_output_dir

    args.to = ExportFormat(args.to)
    if args.to == ExportFormat.GRAPHML:
        check_output(args.output, "GraphML file")
    else:
        check_output_dir(args.output, "Neuronpedia folder")
    graph = load_graph(args.graph)
    if args.to == ExportFormat.GRAPHML:
        out = write_graphml(args.output, graph)
    else:
        attribution = load_attribution(args.graph, graph) if sidecar_path(args.graph).exists() else None
        out = write_neuronpedia(args.output, graph, attribution, slug=args.slug, scan=args.scan)
    print(f"wrote {out}")
    return 0
