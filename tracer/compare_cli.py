"""`tracer diff A.json B.json` and `tracer common DIR|index.json`: compare graphs (logic in tracer.compare).

diff: 1. load both graphs; 2. tracer.compare.diff (one-line error for graphs of different models);
3. print the text summary, or the whole diff as one JSON object (--json), or serve the side-by-side viewer (--view).
common: 1. the graphs of a batch (its index.json, else every graph file in the folder); 2. tracer.compare.common;
3. write the common circuit as a graph file (default DIR/common.json) that `tracer view` opens.
supernodes: 1. load the graph (and its transcoders when they match it); 2. tracer.supernodes; 3. write them into
the graph's view state (in place, atomically) and print them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ALIGN_HELP = "count token positions from the prompt's end (default: logits sit at -1) or its start"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diff", help="compare two graphs of one model: changed, lost and new nodes and edges")
    p.add_argument("a", type=Path, help="first graph file (A)")
    p.add_argument("b", type=Path, help="second graph file (B)")
    p.add_argument("--align", choices=["end", "start"], default="end", help=ALIGN_HELP)
    p.add_argument("--top", type=int, default=10, help="rows per section of the text summary (also on the --view page)")
    p.add_argument("--json", action="store_true", help="print the whole diff as one JSON object")
    p.add_argument("--view", action="store_true", help="show both graphs side by side in the browser")
    p.add_argument("--port", type=int, default=8051, help="port of the diff viewer (with --view)")
    p.set_defaults(func=run_diff)

    c = sub.add_parser("common", help="the circuit shared by the graphs of a batch, as a graph file")
    c.add_argument("source", type=Path, help="a batch folder (tracer trace --prompts ... -o DIR), its index.json, "
                   "or any folder of graph files")  # fmt: skip
    c.add_argument("--min-share", type=float, default=0.5, help="keep nodes present in at least this share of graphs")
    c.add_argument("--align", choices=["end", "start"], default="end", help=ALIGN_HELP)
    c.add_argument("--any-position", action="store_true", help="match features wherever they are in the prompt")
    c.add_argument("-o", "--output", type=Path, help="graph file to write (default: DIR/common.json)")
    c.set_defaults(func=run_common)

    s = sub.add_parser("supernodes", help="group a graph's features into supernodes automatically (view state)")
    s.add_argument("graph", type=Path, help="graph file; the supernodes are written into its view state")
    s.add_argument("--transcoders", type=Path, help="transcoders of the graph, for decoder-direction similarity "
                   "(default: the bundled CLT when the graph was traced with it; else edges and labels "
                   "only)")  # fmt: skip
    s.add_argument("--threshold", type=float, default=0.5, help="least mean similarity (0-1) within a supernode")
    s.add_argument("--no-store", action="store_true", help="do not use feature-store labels")
    s.add_argument("--dry-run", action="store_true", help="print the supernodes, write nothing")
    s.set_defaults(func=run_supernodes)


def run_diff(args: argparse.Namespace) -> int:
    from tracer.compare import diff, format_diff
    from tracer.errors import ConfigError
    from tracer.graphfile import load_graph

    if args.top < 0:
        raise ConfigError("--top must be >= 0")
    a, b = load_graph(args.a), load_graph(args.b)
    d = diff(a, b, args.align, (args.a.name, args.b.name))
    if args.json:
        out = d.model_dump(mode="json")
        for item in (*out["nodes"], *out["edges"]):
            item["delta"] = (item["b"] or 0.0) - (item["a"] or 0.0)
        print(json.dumps(out))
    else:
        print(format_diff(d, args.top))
    if args.view:
        from viewer import DEFAULT_HOST
        from viewer.diff import serve_diff

        serve_diff(args.a, args.b, a, b, d, DEFAULT_HOST, args.port, args.top)
    return 0


def batch_graphs(source: Path) -> tuple[Path, list[tuple[str, object]]]:
    """(folder, [(file name, GraphFile)]) of a batch index, or of every graph file in a folder."""
    from tracer.batch import INDEX_NAME, load_index
    from tracer.errors import ConfigError
    from tracer.graphfile import load_graph

    index = source if source.is_file() else source / INDEX_NAME
    folder = index.parent
    if index.is_file():
        names = [e.file for e in load_index(index).ok() if e.file]
    elif source.is_dir():
        names = sorted(p.name for p in source.glob("*.json") if p.name != INDEX_NAME)
    else:
        raise ConfigError(f"{source} is neither a batch folder, an index.json nor a folder of graphs")
    graphs = [(n, load_graph(folder / n)) for n in names]
    graphs = [(n, g) for n, g in graphs if "common_of" not in g.metadata.settings]  # not an earlier common.json
    if not graphs:
        raise ConfigError(f"no graphs in {source}")
    return folder, graphs  # type: ignore[return-value]


def run_common(args: argparse.Namespace) -> int:
    from tracer.compare import common
    from tracer.graphfile import save_graph
    from tracer.io import check_output

    folder, graphs = batch_graphs(args.source)
    out = args.output or folder / "common.json"
    check_output(out, "graph file")
    res = common(graphs, args.min_share, args.align, args.any_position)  # type: ignore[arg-type]
    save_graph(out, res.graph)
    print(f"{res.n_features} features in at least {res.graph.metadata.settings['common_min_graphs']} of "
          f"{res.n_graphs} graphs ({len(res.graph.nodes)} nodes, {len(res.graph.edges)} edges)\n"
          f"common circuit: {out}\nview it: tracer view {out}")  # fmt: skip
    return 0


def _graph_transcoders(graph, explicit: Path | None):
    """The graph's transcoders: `explicit` (must match the graph), else the bundled ones if they are the graph's."""
    from tracer.errors import ConfigError
    from tracer.models.loading import file_hash
    from transcoders import DEFAULT_TRANSCODERS, load_transcoders

    path = explicit or Path(DEFAULT_TRANSCODERS)
    if not path.is_dir():
        if explicit is not None:
            raise ConfigError(f"transcoder folder {explicit} not found")
        return None
    digest = file_hash(sorted(path.glob("*.safetensors")))
    if digest != graph.metadata.transcoders.content_hash:
        if explicit is not None:
            raise ConfigError(f"{explicit} are not the transcoders of this graph ({digest} vs "
                              f"{graph.metadata.transcoders.content_hash})")  # fmt: skip
        return None
    return load_transcoders(path, lazy=True)


def run_supernodes(args: argparse.Namespace) -> int:
    from tracer.errors import ConfigError
    from tracer.graphfile import load_graph, save_graph
    from tracer.supernodes import add_supernodes, auto_supernodes, store_labels

    if not 0 <= args.threshold <= 1:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    graph = load_graph(args.graph)
    tc = _graph_transcoders(graph, args.transcoders)
    labels = {} if args.no_store else store_labels(graph)
    groups = auto_supernodes(graph, tc, labels, args.threshold)
    for g in groups:
        print(f"{g.label}: {', '.join(g.members)}")
    what = "decoder directions, edges" if tc is not None else "edges (no matching transcoders)"
    print(f"{len(groups)} supernodes from {what}{' and store labels' if labels else ''}")
    if not args.dry_run and groups:
        save_graph(args.graph, add_supernodes(graph, groups))
        print(f"written into {args.graph}; open it with: tracer view {args.graph}")
    return 0
