"""`tracer view [PATH]`: serve the viewer over a graph file or a folder of graph files."""

from __future__ import annotations

import argparse
from pathlib import Path

from viewer import DEFAULT_HOST, DEFAULT_PORT


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="explore graph files in the browser (a local Dash app)")
    p.add_argument("path", nargs="?", type=Path, default=Path("."),
                   help="a graph .json file, or a folder of them (default: the current folder)")  # fmt: skip
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    p.add_argument("--debug", action="store_true", help="Dash debug mode (dev tools, hot reload)")
    p.add_argument("--allow-write", action="store_true",
                   help="let Save write view state into graph files even when --host is not loopback")  # fmt: skip
    p.add_argument("--features", type=Path, help="feature store for the detail panel (default: the one beside "
                   "the graph's transcoders, when there is one)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from viewer.app import serve  # Dash is imported only when viewing

    serve(args.path, host=args.host, port=args.port, debug=args.debug, allow_write=args.allow_write,
          features=args.features)  # fmt: skip
    return 0
