"""Graph-file schema migrations: parsed JSON of any known `schema_version` brought up to tracer.schema's, one step
at a time (tracer.graphfile.load_graph calls `migrate` before validating).

Versions:
- 1 -> 2: nodes named their kind `type` (renamed to `kind`); edges gain `weight_normalized`, each edge's weight over
  the |weights| into its target among the file's own edges (the unpruned ones are not in the JSON); the empty view
  comes from the schema's default.
- 2 -> 3: nodes gain `target_influence` and `signed_effect`, metadata `effects_target` (all default to None).
Fields of the wrong type are left as they are, for validation to name them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracer.errors import GraphFileError
from tracer.schema import SCHEMA_VERSION


def migrate(data: Any, path: Path | str = "graph file") -> dict:
    """Bring parsed JSON of any known schema version up to SCHEMA_VERSION (step by step)."""
    if not isinstance(data, dict):
        raise GraphFileError(f"{path} is not a graph file (top level is not a JSON object)")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise GraphFileError(f"{path} is not a graph file (no integer schema_version)")
    if version > SCHEMA_VERSION:
        raise GraphFileError(f"{path} has schema_version {version}, newer than this tracer reads ({SCHEMA_VERSION}); "
                             "upgrade clt-tracer")  # fmt: skip
    if version < 1:
        raise GraphFileError(f"{path} has unknown schema_version {version}")
    while version < SCHEMA_VERSION:
        data = MIGRATIONS[version](data)
        version = data["schema_version"]
    return data


def _v1_to_v2(data: dict) -> dict:
    """Fields of the wrong type are left as they are, for validation to name them."""
    nodes, edges = data.get("nodes", []), data.get("edges", [])
    if isinstance(nodes, list):
        nodes = [{("kind" if k == "type" else k): v for k, v in n.items()} if isinstance(n, dict) else n
                 for n in nodes]  # fmt: skip
    if not isinstance(edges, list):
        return data | {"schema_version": 2, "nodes": nodes}
    ok = [isinstance(e, dict) and isinstance(e.get("weight"), int | float) and isinstance(e.get("target"), str)
          for e in edges]  # fmt: skip
    in_abs: dict[Any, float] = defaultdict(float)
    for e, good in zip(edges, ok, strict=True):
        if good:
            in_abs[e["target"]] += abs(e["weight"])
    new_edges = [
        e | {"weight_normalized": e["weight"] / in_abs[e["target"]] if in_abs[e["target"]] else 0.0} if good else e
        for e, good in zip(edges, ok, strict=True)
    ]  # fmt: skip
    return data | {"schema_version": 2, "nodes": nodes, "edges": new_edges}


def _v2_to_v3(data: dict) -> dict:
    return data | {"schema_version": 3}  # the new fields default to None


MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2, 2: _v2_to_v3}  # version v -> its upgrade to v + 1
