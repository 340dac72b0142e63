"""`tracer` command line: every subcommand lives beside the code it drives and registers itself here.

Each subcommand module exposes `add_parser(subparsers)`, which sets `func=run` on its parser. A TracerError from any
subcommand becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tracer.errors import TracerError

SUBCOMMAND_MODULES = (
    "tracer.trace_cli",  # trace
    "tracer.graph_cli",  # prune, export
    "tracer.compare_cli",  # diff, common, supernodes
    "tracer.intervene_cli",  # intervene, generate
    "tracer.validate_cli",  # validate
    "viewer.cli",  # view
    "viewer.figure_cli",  # figure
    "transcoders.cli",  # transcoders train | eval | convert
    "tracer.features.cli",  # features build | show | search | export
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracer", description="Attribution graphs for transformer language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log phase timings and progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency, not an unbuilt subcommand
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except TracerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
