"""Graph files: the pruned graph as versioned JSON (tracer.schema.GraphFile) plus its unpruned sidecar.

A graph `NAME.json` comes with `NAME.adjacency.safetensors` holding everything needed to re-prune without re-tracing:
tensors `adjacency.indices` [2, nnz] int64, `adjacency.values` [nnz], `adjacency.shape` [2] int64 (the unpruned
sparse A[target, source]), NodeLayout.to_tensors(), `activations` [n_features], `logit_probs` [n_logits],
`error_norms` [n_layers, n_pos], optional `row_mass_kept` [n_nodes]; string metadata `format`, `token_strs`,
`logit_strs`, `timings`, `stats` (JSON-encoded).

Building: 1. nodes: the kept rows, ids from schema.node_id; 2. edges: the kept edges, each with weight / Σ|incoming
weights of its target| in the unpruned graph; 3. metadata: identities, settings (incl. the thresholds), timings,
scores of the unpruned and pruned graphs (tracer.scores), counts, creation time, tracer version.
Saving: the sidecar first, then the JSON, each atomically (a reader never sees a JSON without its sidecar).
Loading: 1. read; 2. parse JSON; 3. migrate older schema versions step by step; 4. validate.

Schema versions:
- 1: as 2, except that nodes named their kind `type`, edges had no `weight_normalized`, and there was no `view`.
  Migrating renames `type` to `kind`, normalises each edge by the |weights| into its target among the file's own
  edges (the unpruned ones are not in the JSON), and starts an empty view.
- 2: tracer.schema.GraphFile.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open

from tracer.errors import GraphFileError
from tracer.io import atomic_save_safetensors, atomic_write_text
from tracer.layout import KIND_ORDER, NodeKind, NodeLayout, NodeRef
from tracer.prune import Edges, PruneResult, RowValues, prune
from tracer.result import Attribution
from tracer.schema import SCHEMA_VERSION, GraphEdge, GraphFile, GraphNode, Identity, Metadata, node_id
from tracer.scores import graph_scores

SIDECAR_SUFFIX = ".adjacency.safetensors"
SIDECAR_FORMAT = "clt-tracer adjacency v1"
Settings = dict[str, float | int | str | bool | None | list[str]]


def sidecar_path(path: str | Path) -> Path:
    """`NAME.json` -> `NAME.adjacency.safetensors` (beside it)."""
    return Path(path).with_suffix(SIDECAR_SUFFIX)


def tracer_version() -> str:
    try:
        return importlib.metadata.version("clt-tracer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# building


def build_graph_file(
    attribution: Attribution,
    prune_result: PruneResult,
    *,
    prompt: str,
    model: Identity,
    transcoders: Identity,
    settings: Settings,
    labels: dict[str, str] | None = None,
) -> GraphFile:
    """The GraphFile of a pruned attribution (module docstring, building steps 1-3).

    settings: every trace setting (the thresholds of `prune_result` are added); labels: node id -> label (clerp).
    """
    lay = attribution.layout
    nodes, row_ids = _nodes(attribution, prune_result, labels or {})
    edges = _edges(attribution, prune_result, row_ids)
    probs = attribution.logit_probs
    meta = Metadata(
        prompt=prompt, tokens=list(attribution.token_strs), token_ids=lay.tokens.tolist(), model=model,
        transcoders=transcoders, n_layers=lay.n_layers,
        settings=settings | {"node_threshold": prune_result.node_threshold,
                             "edge_threshold": prune_result.edge_threshold},
        timings=attribution.timings | {"prune": prune_result.seconds},
        scores=graph_scores(attribution.adjacency, lay, probs),
        pruned_scores=graph_scores(attribution.adjacency, lay, probs, keep_mask=prune_result.node_mask),
        n_nodes_unpruned=lay.n_nodes, n_edges_unpruned=int(Edges.of(attribution.adjacency).rows.numel()),
        created=datetime.now(UTC).isoformat(timespec="seconds"), tracer_version=tracer_version(), adjacency_file=None,
    )  # fmt: skip
    return GraphFile(schema_version=SCHEMA_VERSION, metadata=meta, nodes=nodes, edges=edges)


def _nodes(attribution: Attribution, result: PruneResult, labels: dict[str, str]) -> tuple[list[GraphNode], dict]:
    """Step 1: one GraphNode per kept row, in row order; also row -> id."""
    vals = RowValues.of(attribution)
    rows = result.node_mask.nonzero().flatten().tolist()
    nodes, ids = [], {}
    for row, (k, layer, pos, index) in zip(rows, attribution.layout.table[rows].tolist(), strict=True):
        ref = NodeRef(KIND_ORDER[k], layer, pos, index)
        ids[row] = nid = node_id(ref)
        act, prob = float(vals.activation[row]), float(vals.probability[row])
        has_token = ref.kind in (NodeKind.EMBEDDING, NodeKind.LOGIT)
        nodes.append(GraphNode(
            id=nid, kind=ref.kind, layer=layer, pos=pos,
            feature=index if ref.kind == NodeKind.FEATURE else None,
            token_id=index if has_token else None, token=vals.text.get(row),
            probability=None if math.isnan(prob) else prob, activation=None if math.isnan(act) else act,
            influence=float(result.node_influence[row]), label=labels.get(nid, ""),
        ))  # fmt: skip
    return nodes, ids


def _edges(attribution: Attribution, result: PruneResult, ids: dict[int, str]) -> list[GraphEdge]:
    """Step 2: the kept edges, normalised by their target's total |input| in the unpruned graph."""
    full = Edges.of(attribution.adjacency)
    in_abs = torch.zeros(full.n, dtype=torch.float64).index_add_(0, full.rows, full.values.abs().double())
    kept = Edges.of(result.adjacency)
    norm = (kept.values.double() / in_abs[kept.rows].clamp_min(1e-30)).tolist()
    return [
        GraphEdge(source=ids[s], target=ids[t], weight=w, weight_normalized=wn)
        for t, s, w, wn in zip(kept.rows.tolist(), kept.cols.tolist(), kept.values.tolist(), norm, strict=True)
    ]


# saving


def save_graph(path: str | Path, graph: GraphFile, attribution: Attribution | None = None) -> Path:
    """Write `path` (JSON) and, given the unpruned attribution, its sidecar first; both atomically.
    Returns the JSON path. `graph` is not modified (the written copy records the sidecar's name)."""
    path = Path(path)
    graph = graph.model_copy(deep=True)
    if attribution is not None:
        side = sidecar_path(path)
        _save_sidecar(side, attribution)
        graph.metadata.adjacency_file = side.name
    atomic_write_text(path, graph.model_dump_json())
    return path


def _save_sidecar(path: Path, a: Attribution) -> None:
    adj = a.adjacency.coalesce() if a.adjacency.layout == torch.sparse_coo else a.adjacency.to_sparse_coo().coalesce()
    tensors = {
        "adjacency.indices": adj.indices(), "adjacency.values": adj.values(),
        "adjacency.shape": torch.tensor(list(adj.shape)), "activations": a.activations,
        "logit_probs": a.logit_probs, "error_norms": a.error_norms, **a.layout.to_tensors(),
    }  # fmt: skip
    if a.row_mass_kept is not None:
        tensors["row_mass_kept"] = a.row_mass_kept
    meta = {"format": SIDECAR_FORMAT, "token_strs": json.dumps(a.token_strs), "logit_strs": json.dumps(a.logit_strs),
            "timings": json.dumps(a.timings), "stats": json.dumps(a.stats)}  # fmt: skip
    atomic_save_safetensors({k: v.detach().cpu().clone() for k, v in tensors.items()}, path, metadata=meta)


# loading


def load_graph(path: str | Path) -> GraphFile:
    """Read, migrate and validate a graph file; any problem -> GraphFileError with a one-line message."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GraphFileError(f"graph file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GraphFileError(f"cannot read graph file {p}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise GraphFileError(f"{p} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    data = migrate(data, p)
    try:
        return GraphFile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "top level"
        raise GraphFileError(f"{p} is not a valid graph file ({e.error_count()} problems; first: {loc}: "
                             f"{err['msg']})") from None  # fmt: skip


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
    nodes = [{("kind" if k == "type" else k): v for k, v in n.items()} if isinstance(n, dict) else n
             for n in data.get("nodes", [])]  # fmt: skip
    edges = data.get("edges", [])
    in_abs: dict[Any, float] = defaultdict(float)
    for e in edges:
        if isinstance(e, dict) and isinstance(e.get("weight"), int | float):
            in_abs[e.get("target")] += abs(e["weight"])
    new_edges = [
        e | {"weight_normalized": e["weight"] / in_abs[e.get("target")] if in_abs[e.get("target")] else 0.0}
        if isinstance(e, dict) and isinstance(e.get("weight"), int | float) else e
        for e in edges
    ]  # fmt: skip
    return data | {"schema_version": 2, "nodes": nodes, "edges": new_edges}


MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2}  # version v -> its upgrade to v + 1

REQUIRED = ("adjacency.indices", "adjacency.values", "adjacency.shape", "activations", "logit_probs", "error_norms",
            "layout.tokens", "layout.features", "layout.logit_tokens", "layout.n_layers")  # fmt: skip


def load_attribution(path: str | Path) -> Attribution:
    """The unpruned Attribution from a graph's sidecar. `path`: the graph JSON (its sidecar is found by name, else
    by the JSON's metadata.adjacency_file) or the sidecar itself."""
    p = Path(path)
    side = p if p.name.endswith(".safetensors") else sidecar_path(p)
    if not side.exists() and p.suffix == ".json" and p.exists():
        ref = load_graph(p).metadata.adjacency_file
        side = p.parent / ref if ref else side
    if not side.exists():
        raise GraphFileError(f"adjacency sidecar not found: {side} (re-run `tracer trace` to create it)")
    try:
        with safe_open(str(side), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
    except (SafetensorError, OSError) as e:
        raise GraphFileError(f"corrupt adjacency sidecar {side}: {e}") from None
    return _attribution(side, t, meta)


def _attribution(side: Path, t: dict[str, torch.Tensor], meta: dict[str, str]) -> Attribution:
    missing = [k for k in REQUIRED if k not in t]
    if meta.get("format") != SIDECAR_FORMAT or missing:
        raise GraphFileError(f"{side} is not a clt-tracer adjacency sidecar (missing {missing or 'format tag'})")
    try:
        layout = NodeLayout.from_tensors(t)
        n = layout.n_nodes
        shape = tuple(t["adjacency.shape"].tolist())
        idx = t["adjacency.indices"].long()
        bad_idx = idx.dim() != 2 or idx.shape[0] != 2 or (idx.numel() > 0 and not 0 <= idx.min() <= idx.max() < n)
        if shape != (n, n) or bad_idx:
            raise GraphFileError(f"{side}: adjacency shape/indices do not match the {n}-node layout")
        token_strs, logit_strs = json.loads(meta["token_strs"]), json.loads(meta["logit_strs"])
        adjacency = torch.sparse_coo_tensor(idx, t["adjacency.values"], (n, n), check_invariants=False).coalesce()
        a = Attribution(
            layout=layout, adjacency=adjacency,
            activations=t["activations"], logit_probs=t["logit_probs"], error_norms=t["error_norms"],
            token_strs=token_strs, logit_strs=logit_strs, timings=json.loads(meta.get("timings", "{}")),
            stats=json.loads(meta.get("stats", "{}")), row_mass_kept=t.get("row_mass_kept"),
        )  # fmt: skip
    except (KeyError, ValueError, IndexError, RuntimeError) as e:
        raise GraphFileError(f"{side} is inconsistent: {e}") from None
    counts = ((len(a.activations), layout.count(NodeKind.FEATURE), "activations"),
              (len(a.logit_probs), layout.count(NodeKind.LOGIT), "logit_probs"),
              (len(a.token_strs), layout.n_pos, "token_strs"), (len(a.logit_strs), layout.count(NodeKind.LOGIT),
              "logit_strs"), (a.error_norms.numel(), layout.count(NodeKind.ERROR), "error_norms"))  # fmt: skip
    for got, want, name in counts:
        if got != want:
            raise GraphFileError(f"{side}: {name} has {got} entries, the layout needs {want}")
    return a


# re-pruning


def reprune(path: str | Path, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> GraphFile:
    """Re-prune a saved graph from its stored unpruned adjacency at new thresholds; keeps the metadata (prompt,
    identities, settings, creation time), the view state and every node label. Nothing is written."""
    old = load_graph(path)
    attribution = load_attribution(path)
    result = prune(attribution, node_threshold=node_threshold, edge_threshold=edge_threshold)
    m = old.metadata
    labels = {n.id: n.label for n in old.nodes if n.label}
    new = build_graph_file(attribution, result, prompt=m.prompt, model=m.model, transcoders=m.transcoders,
                           settings=m.settings, labels=labels)  # fmt: skip
    new.metadata.created, new.metadata.adjacency_file = m.created, m.adjacency_file
    new.metadata.timings = m.timings | {"prune": result.seconds}
    new.view = old.view.model_copy(deep=True)
    return new
