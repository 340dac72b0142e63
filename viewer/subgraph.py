"""The pinned subgraph as dash-cytoscape elements (plain dicts): supernodes as labelled boxes, layered by layer.

1. items: each pinned node stands for itself unless a supernode holds it; a supernode is one item (id
   GROUP_PREFIX + index, the same value as in the pinned list), drawn as a cytoscape compound node: a labelled box
   whose children are its members.
2. positions (cytoscape "preset" layout): one row per layer (embeddings at the bottom, logits on top), x by token
   position. A supernode sits on its members' mean row and position, its members side by side inside the box;
   items sharing a cell are spread sideways.
3. edges: the graph's edges between different items, summed per item pair (weights and weight_normalized),
   green/purple by sign, width by |Σ weight_normalized| (saturating at PCT_CLAMP, as in the main graph).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tracer.layout import NodeKind
from viewer.model import GraphView, display_name
from viewer.state import GROUP_PREFIX, UrlState

X_STEP, Y_STEP, SPREAD, MEMBER_STEP = 190.0, 110.0, 170.0, 46.0  # px: columns, rows, items in a cell, members
PCT_CLAMP, MAX_EDGE_PX = 0.4, 9.0
SHAPE = {NodeKind.FEATURE: "ellipse", NodeKind.ERROR: "diamond", NodeKind.EMBEDDING: "rectangle",
         NodeKind.LOGIT: "rectangle"}  # fmt: skip
STYLESHEET = [
    {"selector": "node", "style": {"label": "data(label)", "shape": "data(shape)", "background-color": "data(color)",
                                   "width": 26, "height": 26, "font-size": 13, "text-wrap": "wrap",
                                   "text-max-width": 160, "text-valign": "bottom", "text-margin-y": 4,
                                   "text-background-color": "#ffffff", "text-background-opacity": 0.8}},
    {"selector": "node:parent", "style": {"shape": "round-rectangle", "background-color": "#efe9f7",
                                          "background-opacity": 0.9, "border-width": 2, "border-color": "#7a5ea8",
                                          "padding": 14, "text-valign": "top", "text-halign": "center",
                                          "text-margin-y": -4, "font-size": 14, "font-weight": "bold"}},
    {"selector": "node.member", "style": {"width": 18, "height": 18, "font-size": 10, "text-max-width": 90}},
    {"selector": "node:selected", "style": {"border-width": 3, "border-color": "#e4572e"}},
    {"selector": "edge", "style": {"line-color": "data(color)", "width": "data(width)", "curve-style": "bezier",
                                   "target-arrow-shape": "triangle", "target-arrow-color": "data(color)",
                                   "arrow-scale": 0.8, "opacity": 0.8}},
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


def layer_row(view: GraphView, node_id: str) -> int:
    """0 for embeddings, layer + 1 for features and errors, n_layers + 1 for logits."""
    n = view.graph.nodes[view.row[node_id]]
    top = view.graph.metadata.n_layers + 1
    return 0 if n.kind is NodeKind.EMBEDDING else top if n.kind is NodeKind.LOGIT else n.layer + 1


def _positions(view: GraphView, items: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Item id and member id -> (x, y) px (y down: logits on top)."""
    top = view.graph.metadata.n_layers + 1
    members: dict[str, list[str]] = defaultdict(list)
    for node, it in items.items():
        members[it].append(node)
    anchor = {it: (float(np.mean([view.graph.nodes[view.row[m]].pos for m in ms])),
                   round(float(np.mean([layer_row(view, m) for m in ms])))) for it, ms in members.items()}  # fmt: skip
    cells: dict[tuple[int, int], list[str]] = defaultdict(list)
    for it, (pos, row) in sorted(anchor.items(), key=lambda kv: kv[1]):
        cells[(row, round(pos))].append(it)
    out: dict[str, tuple[float, float]] = {}
    for (row, _), its in cells.items():
        widths = [max(1, len(members[it]) if it.startswith(GROUP_PREFIX) else 1) for it in its]
        offset = -(sum(widths) - 1) / 2
        for it, w in zip(its, widths, strict=True):
            x = anchor[it][0] * X_STEP + (offset + (w - 1) / 2) * SPREAD
            y = (top - row) * Y_STEP
            out[it] = (x, y)
            if it.startswith(GROUP_PREFIX):
                for j, m in enumerate(members[it]):
                    out[m] = (x + (j - (len(members[it]) - 1) / 2) * MEMBER_STEP, y)
            offset += w
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
                      "color": "#2f8f3a" if w >= 0 else "#8e44ad",
                      "width": 1 + (MAX_EDGE_PX - 1) * min(abs(wn), PCT_CLAMP) / PCT_CLAMP}}
            for (a, b), (w, wn) in sums.items()]  # fmt: skip


def _node(view: GraphView, node_id: str, state: UrlState, xy: tuple[float, float], parent: str | None) -> dict:
    n = view.graph.nodes[view.row[node_id]]
    data = {"id": node_id, "label": display_name(n, state.labels), "shape": SHAPE[n.kind], "color": COLOR[n.kind],
            "kind": n.kind.value}  # fmt: skip
    if parent:
        data["parent"] = parent
    return {"data": data, "position": {"x": xy[0], "y": xy[1]}, "classes": "member" if parent else ""}


def subgraph_elements(view: GraphView, state: UrlState) -> list[dict]:
    """Cytoscape elements for the pinned nodes of `state` that exist in this graph: supernode boxes first (a
    compound parent must precede its children), then nodes, then the summed edges between items."""
    items = item_of(state, view)
    pos = _positions(view, items)
    groups = []
    for k, g in enumerate(state.supernodes):
        gid = f"{GROUP_PREFIX}{k}"
        members = [m for m in g.members if items.get(m) == gid]
        if members:
            groups.append({"data": {"id": gid, "label": g.label, "shape": "round-rectangle", "color": COLOR[None],
                                    "kind": "supernode", "members": members},
                           "position": {"x": pos[gid][0], "y": pos[gid][1]}, "classes": "supernode"})  # fmt: skip
    nodes = [_node(view, i, state, pos[i], None if it == i else it) for i, it in items.items()]
    return groups + nodes + _edges(view, items)


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
