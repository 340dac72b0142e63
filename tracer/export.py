"""Export a graph file to other tools: the circuit-tracer / Neuronpedia frontend JSON, and GraphML.

Neuronpedia (the frontend's `schema_version` 1):
1. ids: every node gets circuit-tracer's id — features `{layer}_{feature}_{pos}`, errors `{layer}_-1_{pos}`,
   embeddings `E_{token_id}_{pos}`, logits `{n_layers+1}_{token_id}_{pos}`.
2. nodes: `feature` (Cantor pair of (layer, feature) for features, -1 for errors, the position for embeddings, the
   token id for logits), `layer` as a string ("E" for embeddings), `ctx_idx`, `feature_type`, `token_prob`,
   `is_target_logit` (the first logit target), `run_idx`/`reverse_ctx_idx` 0, `jsNodeId`, `clerp` (edited label,
   else label; logits always end in `Output "tok" (p=0.412)`, a label going in front of it, because the frontend
   reads the probability with `clerp.split('(p=')[1]` and the token between the first two `"`), `influence` as the
   *cumulative* influence fraction over the unpruned graph (none for logits), `activation` (features).
3. links: `source`, `target`, `weight` (raw A[target, source]).
4. metadata (`slug`, `scan`, `transcoder_list`, `prompt_tokens`, `prompt` — the decoded prompt with its BOS text,
   as circuit-tracer writes it —, `node_threshold`, `schema_version`) and
   qParams (pins, supernodes and clicked node of the view state); the folder's `graph-metadata.json` lists the
   metadata of every graph in it (one entry per slug).
GraphML: the pruned graph via networkx, node attributes from the graph file (None values left out).
"""

from __future__ import annotations

import io
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from tracer.errors import ConfigError, GraphFileError
from tracer.io import atomic_write_bytes, atomic_write_text
from tracer.layout import KIND_ORDER, NodeKind, NodeRef
from tracer.prune import cumulative_share, logit_weights, node_influence
from tracer.result import Attribution
from tracer.schema import GraphFile, GraphNode, node_id

NEURONPEDIA_SCHEMA_VERSION = 1
GRAPH_METADATA_FILE = "graph-metadata.json"


class ExportFormat(StrEnum):
    NEURONPEDIA = "neuronpedia"
    GRAPHML = "graphml"


class FeatureType(StrEnum):
    """Neuronpedia's `feature_type` of each node kind."""

    FEATURE = "cross layer transcoder"
    ERROR = "mlp reconstruction error"
    EMBEDDING = "embedding"
    LOGIT = "logit"


FEATURE_TYPE = {NodeKind.FEATURE: FeatureType.FEATURE, NodeKind.ERROR: FeatureType.ERROR,
                NodeKind.EMBEDDING: FeatureType.EMBEDDING, NodeKind.LOGIT: FeatureType.LOGIT}  # fmt: skip


def cantor_pair(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def process_token(token: str) -> str:
    """Control characters as the frontend shows them."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def slugify(text: str, max_len: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].strip("-") or "graph"


def logit_clerp(token: str, prob: float, label: str = "") -> str:
    """`[label · ]Output "tok" (p=0.412)`: what the frontend parses. A `(p=` or `"` in the label or token would move
    what it finds, so they are written `(p =` and `'`."""
    safe = lambda s: s.replace("(p=", "(p =").replace('"', "'")  # noqa: E731
    base = f'Output "{safe(process_token(token))}" (p={prob:.3f})'
    return f"{safe(label)} · {base}" if label else base


# 1. ids


def neuronpedia_id(node: GraphNode, n_layers: int) -> str:
    return {
        NodeKind.FEATURE: f"{node.layer}_{node.feature}_{node.pos}",
        NodeKind.ERROR: f"{node.layer}_-1_{node.pos}",
        NodeKind.EMBEDDING: f"E_{node.token_id}_{node.pos}",
        NodeKind.LOGIT: f"{n_layers + 1}_{node.token_id}_{node.pos}",
    }[node.kind]


# 2. nodes


def _node(node: GraphNode, n_layers: int, influence: float | None, clerp: str, target: bool) -> dict[str, Any]:
    k, layer, pos = node.kind, node.layer, node.pos
    feature, layer_s, js = {
        NodeKind.FEATURE: (cantor_pair(layer, node.feature or 0), str(layer), f"{layer}_{node.feature}-0"),
        NodeKind.ERROR: (-1, str(layer), f"{layer}_-1-{pos}"),
        NodeKind.EMBEDDING: (pos, "E", f"E_{node.token_id}-{pos}"),
        NodeKind.LOGIT: (node.token_id, str(n_layers + 1), f"L_{node.token_id}-{pos}"),
    }[k]
    prob = node.probability or 0.0
    if k == NodeKind.LOGIT:
        clerp = logit_clerp(node.token or "", prob, clerp)
    return {
        "node_id": neuronpedia_id(node, n_layers), "feature": feature, "layer": layer_s, "ctx_idx": pos,
        "feature_type": FEATURE_TYPE[k].value, "token_prob": prob if k == NodeKind.LOGIT else 0.0,
        "is_target_logit": target, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": js, "clerp": clerp,
        "influence": None if k == NodeKind.LOGIT else influence,
        "activation": node.activation if k == NodeKind.FEATURE else None,
    }  # fmt: skip


def cumulative_influence(graph: GraphFile, attribution: Attribution | None) -> dict[str, float]:
    """Node id -> cumulative influence fraction. Exact given the unpruned attribution; without it, ranked among
    the file's own nodes (an approximation: the pruned-away nodes' share is unknown)."""
    if attribution is None:
        infl = torch.tensor([n.influence for n in graph.nodes], dtype=torch.float64)
        return dict(zip((n.id for n in graph.nodes), cumulative_share(infl).tolist(), strict=True))
    lay = attribution.layout
    share = cumulative_share(node_influence(attribution.adjacency, logit_weights(lay, attribution.logit_probs)))
    row_of = {node_id(NodeRef(KIND_ORDER[k], layer, pos, index)): row
              for row, (k, layer, pos, index) in enumerate(lay.table.tolist())}  # fmt: skip
    missing = [n.id for n in graph.nodes if n.id not in row_of]
    if missing:
        raise GraphFileError(f"graph node {missing[0]} is not in the adjacency sidecar (stale sidecar?)")
    return {n.id: float(share[row_of[n.id]]) for n in graph.nodes}


def to_neuronpedia(graph: GraphFile, attribution: Attribution | None = None, *, slug: str | None = None,
                   scan: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The Neuronpedia / circuit-tracer frontend JSON of a graph file (module docstring, steps 1-4).

    attribution: the unpruned graph (load_attribution) for exact cumulative influence; slug: the graph's name
    (default: from the prompt); scan: the transcoder set's name (default: metadata.transcoders.name).
    """
    m, view = graph.metadata, graph.view
    n_layers = m.n_layers
    ids = {n.id: neuronpedia_id(n, n_layers) for n in graph.nodes}
    infl = cumulative_influence(graph, attribution)
    first_logit = next((n.id for n in graph.nodes if n.kind == NodeKind.LOGIT), None)
    nodes = [_node(n, n_layers, infl[n.id], view.labels.get(n.id, n.label), n.id == first_logit) for n in graph.nodes]
    links = [{"source": ids[e.source], "target": ids[e.target], "weight": e.weight} for e in graph.edges]
    threshold = m.settings.get("node_threshold")
    meta = {
        "slug": slug or slugify(m.prompt), "scan": scan or m.transcoders.name, "transcoder_list": [],
        "prompt_tokens": [process_token(t) for t in m.tokens], "prompt": "".join(m.tokens),
        "node_threshold": threshold if isinstance(threshold, int | float) else None,
        "schema_version": NEURONPEDIA_SCHEMA_VERSION,
    }  # fmt: skip
    q = {
        "pinnedIds": [ids[i] for i in view.pinned if i in ids],
        "supernodes": [[s.label, *(ids[i] for i in s.members if i in ids)] for s in view.supernodes],
        "linkType": "both", "clickedId": ids.get(view.clicked or "", ""), "sg_pos": "",
    }  # fmt: skip
    return {"metadata": meta, "qParams": q, "nodes": nodes, "links": links}


def write_neuronpedia(path_dir: str | Path, graph: GraphFile, attribution: Attribution | None = None, *,
                      slug: str | None = None, scan: str | None = None) -> Path:  # fmt: skip
    """Write `DIR/{slug}.json` and add its metadata to `DIR/graph-metadata.json` (replacing one of the same slug).
    Returns the graph's path."""
    d = Path(path_dir)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"neuronpedia export needs a directory, {d} is a file")
    doc = to_neuronpedia(graph, attribution, slug=slug, scan=scan)
    meta = doc["metadata"]
    out = atomic_write_text(d / f"{meta['slug']}.json", json.dumps(doc))
    index_path = d / GRAPH_METADATA_FILE
    index: Any = {"graphs": []}
    if index_path.exists():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            index = None
        if not isinstance(index, dict) or not isinstance(index.get("graphs"), list):
            raise GraphFileError(f"{index_path} is not a graph-metadata file; move it away first")
    index["graphs"] = [g for g in index["graphs"] if not isinstance(g, dict) or g.get("slug") != meta["slug"]]
    index["graphs"].append(meta)
    atomic_write_text(index_path, json.dumps(index, indent=2))
    return out


# GraphML


def to_networkx(graph: GraphFile) -> nx.DiGraph:
    """The graph file's (pruned) graph: nodes keyed by id with the GraphNode fields as attributes (None left out,
    kind as its string), edges source -> target with weight and weight_normalized."""
    g = nx.DiGraph(prompt=graph.metadata.prompt)
    for n in graph.nodes:
        attrs = {k: v for k, v in n.model_dump(mode="json").items() if v is not None and k != "id"}
        attrs["label"] = graph.view.labels.get(n.id, n.label)
        g.add_node(n.id, **attrs)
    for e in graph.edges:
        g.add_edge(e.source, e.target, weight=e.weight, weight_normalized=e.weight_normalized)
    return g


XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")  # not in XML 1.0


def _xml_safe(value: Any) -> Any:
    return XML_INVALID.sub("\ufffd", value) if isinstance(value, str) else value


def write_graphml(path: str | Path, graph: GraphFile) -> Path:
    """Write the graph file's graph as GraphML (atomically). Characters XML cannot hold (control characters in a
    label or prompt) become U+FFFD."""
    g = to_networkx(graph)
    g = nx.relabel_nodes(g, {n: _xml_safe(n) for n in g if _xml_safe(n) != n})
    g.graph = {k: _xml_safe(v) for k, v in g.graph.items()}
    for _, attrs in g.nodes(data=True):
        attrs.update({k: _xml_safe(v) for k, v in attrs.items()})
    buf = io.BytesIO()
    nx.write_graphml(g, buf)
    return atomic_write_bytes(path, buf.getvalue())
