"""The pinned subgraph as dash-cytoscape elements (plain dicts): supernodes merged, layered, draggable.

1. items: each pinned node stands for itself unless a supernode holds it; a supernode is one item (id
   GROUP_PREFIX + index, the same value as in the pinned list).
2. positions (cytoscape "preset" layout): x by token position, y by layer with embeddings at the bottom; items in
   one cell are spread sideways; a supernode sits at its members' mean.
3. edges: the graph's edges between different items, summed per item pair (weights and weight_normalized), coloured
   green/purple by sign, width by |Σ weight_normalized|.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tracer.layout import NodeKind
from viewer.model import GraphView, display_name
from viewer.state import GROUP_PREFIX, UrlState

X_STEP, Y_STEP, SPREAD = 140.0, 90.0, 70.0  # px between columns, rows, and items in one cell
SHAPE = {NodeKind.FEATURE: "ellipse", NodeKind.ERROR: "diamond", NodeKind.EMBEDDING: "rectangle",
         NodeKind.LOGIT: "rectangle"}  # fmt: skip
STYLESHEET = [
    {"selector": "node", "style": {"label": "data(label)", "shape": "data(shape)", "background-color": "data(color)",
                                   "width": 22, "height": 22, "font-size": 11, "text-wrap": "wrap",
                                   "text-max-width": 120, "text-valign": "bottom", "text-margin-y": 3}},
    {"selector": "node.supernode", "style": {"width": 34, "height": 34, "border-width": 2, "border-color": "#444"}},
    {"selector": "node:selected", "style": {"border-width": 3, "border-color": "#e4572e"}},
    {"selector": "edge", "style": {"line-color": "data(color)", "width": "data(width)", "curve-style": "bezier",
                                   "target-arrow-shape": "triangle", "target-arrow-color": "data(color)",
                                   "arrow-scale": 0.7, "opacity": 0.85}},
]  # fmt: skip
COLOR = {NodeKind.FEATURE: "#d08c3c", NodeKind.ERROR: "#8c8c8c", NodeKind.EMBEDDING: "#3d6fa8",
         NodeKind.LOGIT: "#3d6fa8", None: "#7a5ea8"}  # None: supernode  # fmt: skip


def item_of(state: UrlState, view: GraphView) -> dict[str, str]:
    """Pinned node id (present in this graph) -> its item id (a supernode's, or its own)."""
    out = {p: p for p in state.pinned if p in view.row}
    for k, g in enumerate(state.supernodes):
        for m in g.members:
            if m in out:
                out[m] = f"{GROUP_PREFIX}{k}"
    return out


def _positions(view: GraphView, ids: list[str]) -> dict[str, tuple[float, float]]:
    top = view.graph.metadata.n_layers + 1
    cells: dict[tuple[int, int], list[str]] = defaultdict(list)
    for i in ids:
        n = view.graph.nodes[view.row[i]]
        row = 0 if n.kind is NodeKind.EMBEDDING else top if n.kind is NodeKind.LOGIT else n.layer + 1
        cells[(row, n.pos)].append(i)
    out = {}
    for (row, pos), members in cells.items():
        for k, i in enumerate(members):
            out[i] = (pos * X_STEP + (k - (len(members) - 1) / 2) * SPREAD, (top - row) * Y_STEP)
    return out


def _edges(view: GraphView, items: dict[str, str]) -> list[dict]:
    rows = [view.row[i] for i in items]
    inside = np.zeros(view.n_nodes, dtype=bool)
    inside[rows] = True
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for e in view.edges_of(rows, inputs=True, outputs=False):
        s, t = int(view.src[e]), int(view.tgt[e])
        if not inside[s]:
            continue
        a, b = items[view.graph.nodes[s].id], items[view.graph.nodes[t].id]
        if a != b:
            sums[(a, b)][0] += float(view.weight[e])
            sums[(a, b)][1] += float(view.wnorm[e])
    return [{"data": {"id": f"{a}->{b}", "source": a, "target": b, "weight": w, "weight_normalized": wn,
                      "color": "#2f8f3a" if w >= 0 else "#8e44ad", "width": 1 + 5 * min(abs(wn), 0.4) / 0.4}}
            for (a, b), (w, wn) in sums.items()]  # fmt: skip


def subgraph_elements(view: GraphView, state: UrlState) -> list[dict]:
    """Cytoscape elements for the pinned nodes of `state` that exist in this graph."""
    items = item_of(state, view)
    pos = _positions(view, list(items))
    nodes = []
    for i, it in items.items():
        if it == i:
            n = view.graph.nodes[view.row[i]]
            nodes.append({"data": {"id": i, "label": display_name(n, state.labels), "shape": SHAPE[n.kind],
                                   "color": COLOR[n.kind], "kind": n.kind.value},
                          "position": {"x": pos[i][0], "y": pos[i][1]}})  # fmt: skip
    for k, g in enumerate(state.supernodes):
        members = [m for m in g.members if items.get(m) == f"{GROUP_PREFIX}{k}"]
        if not members:
            continue
        x, y = np.mean([pos[m] for m in members], axis=0)
        nodes.append({"data": {"id": f"{GROUP_PREFIX}{k}", "label": g.label, "shape": "round-rectangle",
                               "color": COLOR[None], "kind": "supernode", "members": members},
                      "position": {"x": float(x), "y": float(y)}, "classes": "supernode"})  # fmt: skip
    return nodes + _edges(view, items)


def pinned_options(view: GraphView, state: UrlState) -> list[dict]:
    """Pinned-list checklist options: supernodes first, then ungrouped pinned nodes (label = plain text)."""
    items = item_of(state, view)
    opts = [{"label": f"{g.label} ({len(g.members)} nodes)", "value": f"{GROUP_PREFIX}{k}"}
            for k, g in enumerate(state.supernodes)]  # fmt: skip
    for p in state.pinned:
        if p not in items:
            opts.append({"label": f"{p} (not in this graph)", "value": p})
        elif items[p] == p:
            opts.append({"label": display_name(view.graph.nodes[view.row[p]], state.labels), "value": p})
    return opts
