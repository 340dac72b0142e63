"""Graph files: the pruned graph as versioned JSON (tracer.schema.GraphFile) plus its unpruned sidecar.

A graph `NAME.json` comes with `NAME.adjacency.safetensors` holding everything needed to re-prune without re-tracing:
the unpruned adjacency as CSR plus the node layout and node values; its contents, their checks and the migration of
v1 sidecars are tracer.sidecar's. Sidecars are read memory-mapped (lazily).

Building: 1. nodes: the kept rows, ids from schema.node_id; 2. edges: the kept edges, each with weight / Σ|incoming
weights of its target| in the unpruned graph; 3. metadata: identities, settings (incl. the thresholds), timings,
scores of the unpruned and pruned graphs (tracer.scores), counts, creation time, tracer version.
Saving (the pair is one unit, tracer.pair): sidecar first, then the JSON recording its hash and size; atomic renames.
Loading: 1. read; 2. parse JSON; 3. migrate older schema versions step by step; 4. validate (edges name nodes).
Every sidecar read through its JSON is checked: `adjacency_file` a bare name in the JSON's own folder, and the
recorded hash and size equal to the sidecar's (its header only is read); a stale pair is one GraphFileError line.

Schema versions:
- 1: as 2, except that nodes named their kind `type`, edges had no `weight_normalized`, and there was no `view`.
  Migrating renames `type` to `kind`, normalises each edge by the |weights| into its target among the file's own
  edges (the unpruned ones are not in the JSON), and starts an empty view.
- 2: as 3, without the nodes' `target_influence` and `signed_effect` and metadata's `effects_target`. Migrating
  leaves them None (they need the unpruned adjacency: re-prune with `tracer prune` to compute them).
- 3: tracer.schema.GraphFile.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors import SafetensorError, safe_open

from tracer.effects import RankBy, effects, node_ranking
from tracer.errors import GraphFileError
from tracer.finite import check_finite
from tracer.layout import KIND_ORDER, NodeKind, NodeRef
from tracer.migrate import migrate
from tracer.pair import recover_pair as recover_pair  # saving's home is tracer.pair: re-exported
from tracer.pair import save_graph as save_graph
from tracer.pair import sidecar_hash, sidecar_path
from tracer.prune import Edges, PruneResult, RowValues, prune
from tracer.result import Attribution
from tracer.schema import SCHEMA_VERSION, GraphEdge, GraphFile, GraphNode, Identity, Metadata, node_id
from tracer.scores import graph_scores
from tracer.sidecar import FINITE, read_attribution

Settings = dict[str, float | int | str | bool | None | list[str]]


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
        scores=graph_scores(attribution.adjacency, lay, probs, node_influence=prune_result.node_influence),
        pruned_scores=graph_scores(attribution.adjacency, lay, probs, keep_mask=prune_result.node_mask),
        n_nodes_unpruned=lay.n_nodes, n_edges_unpruned=attribution.adjacency.nnz,
        created=datetime.now(UTC).isoformat(timespec="seconds"), tracer_version=tracer_version(), adjacency_file=None,
        effects_target=attribution.logit_strs[0] if attribution.logit_strs else None,
    )  # fmt: skip
    return GraphFile(schema_version=SCHEMA_VERSION, metadata=meta, nodes=nodes, edges=edges)


_EFFECTS: dict[int, tuple[weakref.ref, Any]] = {}  # id(attribution) -> (its weakref, effects): threshold-free


def _effects(attribution: Attribution) -> Any:
    """effects(attribution), computed once per Attribution object: a viewer re-pruning one sidecar at many
    thresholds would otherwise recompute it (half of a re-prune) each time."""
    hit = _EFFECTS.get(id(attribution))
    if hit is not None and hit[0]() is attribution:
        return hit[1]
    for key in [k for k, (ref, _) in _EFFECTS.items() if ref() is None]:
        del _EFFECTS[key]
    value = effects(attribution)
    _EFFECTS[id(attribution)] = (weakref.ref(attribution), value)
    return value


def _nodes(attribution: Attribution, result: PruneResult, labels: dict[str, str]) -> tuple[list[GraphNode], dict]:
    """Step 1: one GraphNode per kept row, in row order; also row -> id."""
    vals = RowValues.of(attribution)
    eff = _effects(attribution)
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
            target_influence=float(eff.target_influence[row]), signed_effect=float(eff.signed_effect[row]),
        ))  # fmt: skip
    return nodes, ids


def _edges(attribution: Attribution, result: PruneResult, ids: dict[int, str]) -> list[GraphEdge]:
    """Step 2: the kept edges, normalised by their target's total |input| in the unpruned graph."""
    in_abs = attribution.adjacency.row_abs_sums
    kept = Edges.of(result.adjacency)
    norm = (kept.values.double() / in_abs[kept.rows].clamp_min(1e-30)).tolist()
    return [
        GraphEdge(source=ids[s], target=ids[t], weight=w, weight_normalized=wn)
        for t, s, w, wn in zip(kept.rows.tolist(), kept.cols.tolist(), kept.values.tolist(), norm, strict=True)
    ]


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
    except RecursionError:
        raise GraphFileError(f"{p} is not a graph file (JSON nested too deeply)") from None
    data = migrate(data, p)
    try:
        graph = GraphFile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "top level"
        raise GraphFileError(f"{p} is not a valid graph file ({e.error_count()} problems; first: {loc}: "
                             f"{err['msg']})") from None  # fmt: skip
    except RecursionError:
        raise GraphFileError(f"{p} is not a graph file (nested too deeply)") from None
    _check_references(graph, p)
    return graph


def _check_references(graph: GraphFile, path: Path) -> None:
    """Node ids are unique and every edge joins two of them (a dangling edge breaks every export)."""
    ids = {n.id for n in graph.nodes}
    if len(ids) != len(graph.nodes):
        raise GraphFileError(f"{path} is not a valid graph file (duplicate node ids)")
    for i, e in enumerate(graph.edges):
        if e.source not in ids or e.target not in ids:
            missing = e.source if e.source not in ids else e.target
            raise GraphFileError(f"{path} is not a valid graph file (edges.{i} names node {missing!r}, which is not "
                                 "among its nodes)")  # fmt: skip


def pair_sidecar(path: str | Path, graph: GraphFile | None = None) -> Path:
    """The sidecar of graph JSON `path`, checked to be its own (module docstring); `graph`: that JSON already
    loaded (else it is read). GraphFileError if it is missing, outside the folder, or from another write."""
    p = Path(path)
    if graph is None and not sidecar_path(p).exists() and not p.exists():
        raise GraphFileError(f"graph file not found: {p}")
    m = (graph or load_graph(p)).metadata
    ref = m.adjacency_file or sidecar_path(p).name
    if ref in ("", ".", "..") or "/" in ref or "\\" in ref or "\0" in ref or Path(ref).name != ref:
        raise GraphFileError(f"{p}: metadata.adjacency_file {ref!r} must name a file in the graph's own folder")
    side = p.parent / ref
    if not side.is_file():
        raise GraphFileError(f"adjacency sidecar not found: {side} (re-run `tracer trace` to create it)")
    if m.adjacency_hash is None:  # written before pairs were hashed: nothing to compare
        return side
    size, have = side.stat().st_size, sidecar_hash(side)
    if have != m.adjacency_hash or (m.adjacency_size is not None and size != m.adjacency_size):
        why = (f"content hash {have} != recorded {m.adjacency_hash}" if have != m.adjacency_hash
               else f"size {size} != recorded {m.adjacency_size} bytes")  # fmt: skip
        raise GraphFileError(f"{side} does not belong to {p.name} ({why}: an interrupted write); re-run "
                             "`tracer trace`")  # fmt: skip
    return side


def load_attribution(path: str | Path, graph: GraphFile | None = None) -> Attribution:
    """The unpruned Attribution from a graph's sidecar. `path`: the graph JSON (its sidecar checked by
    pair_sidecar; pass `graph` if already loaded, to parse the JSON once) or the sidecar itself (unchecked)."""
    p = Path(path)
    side = p if p.name.endswith(".safetensors") else pair_sidecar(p, graph)
    if not side.exists():
        raise GraphFileError(f"adjacency sidecar not found: {side} (re-run `tracer trace` to create it)")
    try:
        with safe_open(str(side), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise GraphFileError(f"corrupt adjacency sidecar {side}: {str(e).splitlines()[0] if str(e) else e}") from None
    check_finite(((k, t[k]) for k in FINITE if k in t), f"adjacency sidecar {side}", GraphFileError)
    return read_attribution(side, t, meta)


def _is_str_list(x: object) -> bool:
    return isinstance(x, list) and all(isinstance(s, str) for s in x)


# re-pruning


def reprune(path: str | Path, node_threshold: float = 0.8, edge_threshold: float = 0.98,
            rank_by: str = "influence") -> GraphFile:  # fmt: skip
    """Re-prune a saved graph from its stored unpruned adjacency at new thresholds; keeps the metadata (prompt,
    identities, settings, creation time), the view state and every node label. Nothing is written."""
    old = load_graph(path)
    return reprune_loaded(old, load_attribution(path, old), node_threshold, edge_threshold, rank_by)


def reprune_loaded(old: GraphFile, attribution: Attribution, node_threshold: float = 0.8,
                   edge_threshold: float = 0.98, rank_by: str = "influence") -> GraphFile:  # fmt: skip
    """reprune of a graph and its attribution already loaded (each read once); rank_by: tracer.effects.RankBy."""
    result = prune(attribution, node_threshold=node_threshold, edge_threshold=edge_threshold,
                   rank=node_ranking(attribution, rank_by))  # fmt: skip
    m = old.metadata
    labels = {n.id: n.label for n in old.nodes if n.label}
    new = build_graph_file(attribution, result, prompt=m.prompt, model=m.model, transcoders=m.transcoders,
                           settings=m.settings | {"rank_by": str(RankBy(rank_by).value)}, labels=labels)  # fmt: skip
    new.metadata.created, new.metadata.adjacency_file = m.created, m.adjacency_file
    new.metadata.adjacency_hash, new.metadata.adjacency_size = m.adjacency_hash, m.adjacency_size
    new.metadata.timings = m.timings | {"prune": result.seconds}
    new.view = old.view.model_copy(deep=True)
    return new
