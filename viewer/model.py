"""GraphView: a read-only index over one GraphFile, built once per loaded graph and shared by all sessions.

1. nodes: id -> row; kind code, layer and position as arrays.
2. edges: source/target rows, weight and weight_normalized as arrays, plus CSR orders by target (a node's inputs)
   and by source (its outputs), so a click looks up its edges without scanning all of them.
3. queries (pure): display names (edited label > file label > a name from the kind), a node's connections split
   by sign and sorted, and search: a full node id, `layer/feature`, or text — found in node names and labels, in
   the prompt (a word spread over several tokens finds those positions' tokens and features), and, given a
   feature store, in feature labels and top-context text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from tracer.errors import GraphFileError
from tracer.layout import NodeKind
from tracer.schema import GraphFile, GraphNode

if TYPE_CHECKING:
    from viewer.features import FeatureStore

FEATURE_QUERY = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")  # `layer/feature`


def _csr(keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(ptr [n+1], order [n_edges]): the edges of key k are order[ptr[k]:ptr[k+1]]."""
    order = np.argsort(keys, kind="stable")
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=n), out=ptr[1:])
    return ptr, order


@dataclass(frozen=True, eq=False)
class GraphView:
    graph: GraphFile
    row: dict[str, int]  # node id -> index into graph.nodes
    kind: np.ndarray  # [n_nodes] int8 NodeKind.code
    layer: np.ndarray  # [n_nodes] int64 (-1 embeddings, n_layers logits)
    pos: np.ndarray  # [n_nodes] int64
    src: np.ndarray  # [n_edges] int64 source rows
    tgt: np.ndarray  # [n_edges] int64 target rows
    weight: np.ndarray  # [n_edges] float64 A[target, source]
    wnorm: np.ndarray  # [n_edges] float64 weight / Σ|inputs of target|
    in_csr: tuple[np.ndarray, np.ndarray]
    out_csr: tuple[np.ndarray, np.ndarray]

    @classmethod
    def build(cls, graph: GraphFile) -> GraphView:
        # 1. nodes
        row = {n.id: i for i, n in enumerate(graph.nodes)}
        if len(row) != len(graph.nodes):
            raise GraphFileError("graph file has duplicate node ids")
        n = len(graph.nodes)
        kind = np.array([n.kind.code for n in graph.nodes], dtype=np.int8)
        layer = np.array([n.layer for n in graph.nodes], dtype=np.int64)
        pos = np.array([n.pos for n in graph.nodes], dtype=np.int64)
        # 2. edges
        try:
            src = np.array([row[e.source] for e in graph.edges], dtype=np.int64)
            tgt = np.array([row[e.target] for e in graph.edges], dtype=np.int64)
        except KeyError as e:
            raise GraphFileError(f"graph file has an edge to unknown node {e.args[0]!r}") from None
        weight = np.array([e.weight for e in graph.edges], dtype=np.float64)
        wnorm = np.array([e.weight_normalized for e in graph.edges], dtype=np.float64)
        return cls(graph, row, kind, layer, pos, src, tgt, weight, wnorm, _csr(tgt, n), _csr(src, n))

    @property
    def n_nodes(self) -> int:
        return len(self.graph.nodes)

    def node(self, node_id: str) -> GraphNode | None:
        i = self.row.get(node_id)
        return None if i is None else self.graph.nodes[i]

    def incoming(self, i: int) -> np.ndarray:
        """Edge indices whose target is row i."""
        ptr, order = self.in_csr
        return order[ptr[i] : ptr[i + 1]]

    def outgoing(self, i: int) -> np.ndarray:
        ptr, order = self.out_csr
        return order[ptr[i] : ptr[i + 1]]

    def edges_of(self, rows: list[int], inputs: bool, outputs: bool) -> np.ndarray:
        """Unique edge indices into or out of the given rows."""
        parts = [self.incoming(i) for i in rows if inputs] + [self.outgoing(i) for i in rows if outputs]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


# 3. queries


def display_name(node: GraphNode, labels: dict[str, str] | None = None) -> str:
    """What a node is called on screen (plain text; the caller escapes it where markup is possible)."""
    if labels and node.id in labels:
        return labels[node.id]
    if node.label:
        return node.label
    match node.kind:
        case NodeKind.FEATURE:
            return f"F{node.layer}.{node.feature}"
        case NodeKind.ERROR:
            return f"Error L{node.layer}"
        case NodeKind.EMBEDDING:
            return f'Emb "{node.token}"'
        case NodeKind.LOGIT:
            p = node.probability if node.probability is not None else float("nan")
            return f'Output "{node.token}" (p={p:.3f})'


class Link(NamedTuple):
    node: str  # the node at the other end
    weight: float  # raw A[target, source]
    weight_normalized: float  # weight / Σ|inputs of the target|


class Connections(NamedTuple):
    inputs_pos: list[Link]
    inputs_neg: list[Link]
    outputs_pos: list[Link]
    outputs_neg: list[Link]


def _links(view: GraphView, edges: np.ndarray, other: np.ndarray, limit: int) -> tuple[list[Link], list[Link]]:
    order = edges[np.argsort(-np.abs(view.wnorm[edges]), kind="stable")]
    links = [Link(view.graph.nodes[int(other[e])].id, float(view.weight[e]), float(view.wnorm[e])) for e in order]
    return [lk for lk in links if lk.weight > 0][:limit], [lk for lk in links if lk.weight < 0][:limit]


def connections(view: GraphView, node_id: str, limit: int = 40) -> Connections:
    """A node's inputs and outputs, each split by sign and sorted by |weight_normalized| (at most `limit` each)."""
    i = view.row.get(node_id)
    if i is None:
        return Connections([], [], [], [])
    inputs = _links(view, view.incoming(i), view.src, limit)
    outputs = _links(view, view.outgoing(i), view.tgt, limit)
    return Connections(*inputs, *outputs)


def prompt_positions(tokens: list[str], query: str) -> list[int]:
    """Positions whose token overlaps an occurrence of `query` in the prompt text (case-insensitive), so a word
    split over several tokens finds all of them."""
    folded = [t.casefold() for t in tokens]
    ends = np.cumsum([len(t) for t in folded])
    text, q, out = "".join(folded), query.casefold(), set()
    start = text.find(q)
    while q and start >= 0:
        first = int(np.searchsorted(ends, start, side="right"))
        last = int(np.searchsorted(ends, start + len(q) - 1, side="right"))
        out.update(range(first, last + 1))
        start = text.find(q, start + 1)
    return sorted(p for p in out if p < len(tokens))


def _by_influence(view: GraphView, rows) -> list[str]:
    return [view.graph.nodes[i].id for i in sorted(rows, key=lambda i: -view.graph.nodes[i].influence)]


def search(view: GraphView, query: str, labels: dict[str, str] | None = None, limit: int = 30,
           store: FeatureStore | None = None) -> list[str]:  # fmt: skip
    """Node ids for a query, best first: a full node id (`F0.852@5`) alone; every node of `layer/feature`; else
    nodes whose name, label or token contains the text, then the feature store's matches (labels, top contexts),
    then the tokens and features at the prompt positions the text spans (most influential first)."""
    query = query.strip()
    if not query:
        return []
    if query in view.row:
        return [query]
    m = FEATURE_QUERY.match(query)
    if m:
        layer, feature = int(m[1]), int(m[2])
        rows = [i for i, n in enumerate(view.graph.nodes)
                if n.kind is NodeKind.FEATURE and (n.layer, n.feature) == (layer, feature)]  # fmt: skip
        return _by_influence(view, rows)[:limit]
    q = query.casefold()
    named = [i for i, n in enumerate(view.graph.nodes)
             if q in display_name(n, labels).casefold() or q in (n.token or "").casefold()]  # fmt: skip
    found: list[str] = _by_influence(view, named)
    if store is not None:
        at: dict[tuple[int, int], list[int]] = {}
        for i, n in enumerate(view.graph.nodes):
            if n.kind is NodeKind.FEATURE:
                at.setdefault((n.layer, n.feature or 0), []).append(i)
        found += _by_influence(view, [i for h in store.search(query, limit) for i in at.get((h.layer, h.feature), [])])
    spans = set(prompt_positions(view.graph.metadata.tokens, query))
    emb = [i for i in np.flatnonzero(view.kind == NodeKind.EMBEDDING.code).tolist() if view.pos[i] in spans]
    feats = [i for i in np.flatnonzero(view.kind == NodeKind.FEATURE.code).tolist() if view.pos[i] in spans]
    found += [view.graph.nodes[i].id for i in sorted(emb, key=lambda i: view.pos[i])] + _by_influence(view, feats)
    return list(dict.fromkeys(found))[:limit]
