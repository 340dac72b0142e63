"""Cheap checks of settings and outputs, run before any long work (a trace, a re-prune, an export).

1. numbers: thresholds in [0, 1] (NaN refused), thread counts >= 0 (ports: viewer.security);
2. outputs: tracer.io.check_output / check_output_dir (not a directory, parent not a file, folder writable); a
   graph file's name ends in `.json` (so `-o DIR/` is refused, and its sidecar's name cannot collide).
Each failure is one ConfigError / OutputError line.
"""

from __future__ import annotations

import math
from pathlib import Path

from tracer.errors import ConfigError, OutputError
from tracer.io import check_output


def check_thresholds(node_threshold: float, edge_threshold: float) -> None:
    for name, x in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not (isinstance(x, int | float) and math.isfinite(x) and 0.0 <= x <= 1.0):
            raise ConfigError(f"{name} must be in [0, 1], got {x}")


def check_threads(threads: int) -> None:
    if threads < 0:
        raise ConfigError(f"--threads must be >= 0 (0: one per core), got {threads}")



def check_graph_output(path: Path) -> None:
    """Step 2 for a graph file and its sidecar beside it."""
    from tracer.graphfile import sidecar_path

    check_output(path, "graph file")
    if path.suffix != ".json" or path.name == ".json":
        raise OutputError(f"graph file {path} must be named NAME.json (a folder or another suffix is not a graph file)")
    check_output(sidecar_path(path), "sidecar")
