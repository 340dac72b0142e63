"""`tracer figure GRAPH -o fig.svg|png`: a figure for a paper, from a graph file (no browser, no server).

1. check: the output's suffix (.svg / .png) and folder, the size, then the graph file and the pinned ids.
2. view: pins and supernodes from --pinned / --supernode, else the view saved in the graph file.
3. draw (viewer.paper) and write atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figure", help="draw a graph file (or its pinned subgraph) as an SVG or PNG figure")
    p.add_argument("graph", type=Path, help="a graph .json file")
    p.add_argument("-o", "--output", type=Path, required=True, help="figure file: NAME.svg or NAME.png")
    p.add_argument("--pinned", default=None,
                   help="comma-separated node ids to pin (e.g. F0.852@5,LOGIT123@6); default: the file's saved pins")
    p.add_argument("--supernode", action="append", default=[], metavar="LABEL=ID,ID,...",
                   help="group pinned nodes into a labelled box (repeatable); default: the file's saved groups")
    p.add_argument("--subgraph", action="store_true", help="draw the pinned subgraph instead of the whole graph")
    p.add_argument("--width", type=float, default=10.0, help="figure width in inches (default 10)")
    p.add_argument("--height", type=float, default=6.0, help="figure height in inches (default 6)")
    p.add_argument("--dpi", type=int, default=200, help="PNG resolution in dots per inch (default 200)")
    p.set_defaults(func=run)


def _state(args: argparse.Namespace, view):
    from tracer.errors import ConfigError
    from tracer.schema import Supernode
    from viewer.state import from_view

    st = from_view(view.graph.view)
    if args.pinned is not None:
        st = st.model_copy(update={"pinned": tuple(dict.fromkeys(s for s in args.pinned.split(",") if s)),
                                   "supernodes": ()})  # fmt: skip
    groups = []
    for spec in args.supernode:
        label, _, ids = spec.rpartition("=")
        members = [s for s in ids.split(",") if s]
        if not label or len(members) < 2:
            raise ConfigError(f"--supernode {spec!r}: expected LABEL=ID,ID,... with at least two ids")
        groups.append(Supernode(label=label, members=members))
    if groups:
        pins = tuple(dict.fromkeys([*st.pinned, *(m for g in groups for m in g.members)]))
        st = st.model_copy(update={"supernodes": tuple(groups), "pinned": pins})
    unknown = [i for i in st.pinned if i not in view.row]
    if unknown:
        raise ConfigError(f"node {unknown[0]!r} is not in {args.graph.name} (ids look like F0.852@5, LOGIT123@6)")
    return st


def run(args: argparse.Namespace) -> int:
    from tracer.errors import ConfigError
    from tracer.graphfile import load_graph
    from tracer.io import check_output
    from viewer.model import GraphView
    from viewer.paper import FigureKind, figure_format, write_figure

    figure_format(args.output)  # 1.
    check_output(args.output, "figure")
    if not (1 <= args.width <= 60 and 1 <= args.height <= 60 and 30 <= args.dpi <= 1200):
        raise ConfigError("--width/--height must be 1-60 inches, --dpi 30-1200")
    view = GraphView.build(load_graph(args.graph))
    st = _state(args, view)  # 2.
    kind = FigureKind.SUBGRAPH if args.subgraph else FigureKind.GRAPH
    if kind is FigureKind.SUBGRAPH and not st.pinned:
        raise ConfigError("--subgraph needs pinned nodes: --pinned ID,ID,... (or a view saved in the graph file)")
    out = write_figure(args.output, view, st, kind, width_in=args.width, height_in=args.height, dpi=args.dpi)  # 3.
    print(f"wrote {out} ({kind.value}, {len(st.pinned)} pinned)")
    return 0
