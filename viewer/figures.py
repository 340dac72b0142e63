"""The main graph as a plotly figure (plain dicts, no Dash): every node drawn, edges only for focused nodes.

1. coordinates: x = token position, a column as wide as √(its busiest layer cell); y = layer, embeddings at 0
   (bottom), layer l at l+1, logits at n_layers+1 (top). A cell's nodes form a small grid inside its column and
   layer band; the logits sit side by side above the last token (most probable rightmost), whose column is
   widened until their labels fit.
2. nodes: one scattergl trace per kind (■ embedding/logit, ◆ error, ● feature), marker area by influence (logits
   by probability), hover text escaped for plotly (viewer.text) so labels show literally.
3. labels: the logits and the most influential features (those with a label first: edited, from the file, or
   from the feature store) get their name beside the node, in one SVG text trace; each label takes the first of
   right / left / above / below whose box (at the nominal plot size) overlaps no placed label or labelled node.
4. overlay: edges into/out of the clicked node (Input/Output/Both) and among the pinned nodes (or, toggled, all
   their edges), binned by |pctInput| (= weight_normalized, clamped to ±0.4, √-scaled) into N_BINS widths per
   sign, green positive and purple negative (PRGn); rings marking the pinned, clicked and searched nodes; the
   hovered node's edges. They form a second, small SVG figure laid over the main one with the same axes, so a
   click or hover patches only the overlay and the 10k-node WebGL scene is never redrawn.
"""

from __future__ import annotations

import functools
from enum import IntEnum
from typing import NamedTuple

import numpy as np
from plotly.colors import sample_colorscale

from tracer.layout import KIND_ORDER, NodeKind
from viewer.ids import LinkType
from viewer.labels import PLOT_PX, Placement, candidates, label_px, place
from viewer.model import GraphView, display_name
from viewer.text import plotly_text

N_BINS = 4  # edge widths per sign
PCT_CLAMP = 0.4  # |pctInput| at which colour and width saturate (Anthropic's frontend)
GLYPH = {NodeKind.FEATURE: "circle", NodeKind.ERROR: "diamond", NodeKind.EMBEDDING: "square", NodeKind.LOGIT: "square"}
COLOR = {NodeKind.FEATURE: "#d08c3c", NodeKind.ERROR: "#8c8c8c", NodeKind.EMBEDDING: "#3d6fa8",
         NodeKind.LOGIT: "#3d6fa8"}  # fmt: skip
CELL_ASPECT = 4.0  # a crowded (layer, position) cell becomes a grid about this many nodes wide per node tall
CELL_BAND = 0.6  # share of a layer's height that a crowded cell may fill
LOGIT_SHARE = 0.5  # at most this share of the plot's width goes to the logits' column
MARGIN = dict(l=44, r=12, t=16, b=64)
RING = {"pinned": ("#e4572e", 16), "search": ("#f2c14e", 20), "clicked": ("#111111", 22)}  # colour, size px
HOVER_COLOR = ("#1b7837", "#762a83")  # hovered node's positive / negative edges
LABEL_FONT = dict(size=11, color="#333333")


class NodeTrace(IntEnum):
    """Traces of the main figure: one per node kind (WebGL), then the labels (SVG text)."""

    FEATURE = 0
    ERROR = 1
    EMBEDDING = 2
    LOGIT = 3
    LABELS = 4


class OverlayTrace(IntEnum):
    """Traces of the overlay figure (SVG, drawn over the main one): edges, rings, then the hovered node's edges."""

    EDGE_FIRST = 0  # 2 * N_BINS edge traces: positive bins 0..N-1, then negative bins 0..N-1
    PINNED = 2 * N_BINS
    SEARCH = PINNED + 1
    CLICKED = PINNED + 2
    HOVER_POS = PINNED + 3
    HOVER_NEG = PINNED + 4


NODE_TRACE = {NodeKind.FEATURE: NodeTrace.FEATURE, NodeKind.ERROR: NodeTrace.ERROR,
              NodeKind.EMBEDDING: NodeTrace.EMBEDDING, NodeKind.LOGIT: NodeTrace.LOGIT}  # fmt: skip


class Coordinates(NamedTuple):
    x: np.ndarray  # [n_nodes]
    y: np.ndarray  # [n_nodes]
    col_center: np.ndarray  # [n_pos] x of each token column's centre
    col_width: np.ndarray  # [n_pos]
    n_rows: int  # n_layers + 2

    @property
    def x_range(self) -> tuple[float, float]:
        return float(self.x.min(initial=0.0)) - 0.5, float(self.x.max(initial=1.0)) + 0.5

    @property
    def y_range(self) -> tuple[float, float]:
        return -0.6, self.n_rows - 0.4

    def to_px(self, size: tuple[float, float] = PLOT_PX) -> tuple[np.ndarray, np.ndarray]:
        """[n_nodes] pixel positions (y down) in a plot area of `size`."""
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        return (self.x - x0) / (x1 - x0) * size[0], (y1 - self.y) / (y1 - y0) * size[1]


# 1. coordinates


def _logit_width(view: GraphView, others: float) -> float:
    """Width of the last column that fits the logits' labels side by side (at most LOGIT_SHARE of the plot)."""
    lg = np.flatnonzero(view.kind == NodeKind.LOGIT.code)
    need = sum(label_px(display_token(view, int(i))) for i in lg) / PLOT_PX[0]  # share of the width
    k = min(need, LOGIT_SHARE)
    return k * others / (1 - k)


def display_token(view: GraphView, i: int) -> str:
    return view.graph.nodes[i].token or ""


def coordinates(view: GraphView) -> Coordinates:
    meta = view.graph.metadata
    n_pos, n_layers = len(meta.tokens), meta.n_layers
    is_logit = view.kind == NodeKind.LOGIT.code
    y = np.where(is_logit, n_layers + 1, view.layer + 1).astype(np.float64)
    y = np.where(view.kind == NodeKind.EMBEDDING.code, 0.0, y)
    pos = np.clip(view.pos, 0, max(n_pos - 1, 0))
    pos = np.where(is_logit, max(n_pos - 1, 0), pos)  # the logits sit above the last token
    cell = y.astype(np.int64) * n_pos + pos
    count = np.bincount(cell, minlength=(n_layers + 2) * n_pos)
    width = np.sqrt(np.maximum(count.reshape(n_layers + 2, n_pos)[: n_layers + 1].max(0), 1)).astype(np.float64)
    if is_logit.any() and n_pos:
        width[-1] = max(width[-1], _logit_width(view, float(width[:-1].sum()) or 1.0), float(is_logit.sum()) ** 0.5)
    start = np.concatenate([[0.0], np.cumsum(width)[:-1]])
    # rank inside the cell by (kind, feature index; logits by falling probability), then a grid of `rows` rows
    feat = np.array([n.feature if n.feature is not None else -1 for n in view.graph.nodes], dtype=np.float64)
    prob = np.array([n.probability or 0.0 for n in view.graph.nodes])
    order = np.lexsort((np.where(is_logit, prob, feat), view.kind, cell))  # logits: least probable leftmost
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - np.searchsorted(cell[order], cell[order], side="left")
    k = count[cell]
    rows = np.where(is_logit, 1, np.maximum(1, np.round(np.sqrt(k / CELL_ASPECT)))).astype(np.int64)
    per_row = -(-k // rows)
    r, c = rank // per_row, rank % per_row
    in_row = np.minimum(per_row, k - r * per_row)
    x = start[pos] + width[pos] * (c + 0.5) / in_row
    y = y + (r - (rows - 1) / 2) * CELL_BAND / rows
    return Coordinates(x, y, start + width / 2, width, n_layers + 2)


# 2. nodes


def marker_sizes(view: GraphView) -> np.ndarray:
    """[n_nodes] px: features and errors 5-17 by √(influence / max), logits 8-20 by √probability, tokens 11."""
    infl = np.array([max(n.influence, 0.0) for n in view.graph.nodes])
    prob = np.array([n.probability or 0.0 for n in view.graph.nodes])
    scale = infl.max(initial=0.0) or 1.0
    size = 5 + 12 * np.sqrt(infl / scale)
    size = np.where(view.kind == NodeKind.LOGIT.code, 8 + 12 * np.sqrt(prob), size)
    return np.where(view.kind == NodeKind.EMBEDDING.code, 11.0, size)


def hover_text(view: GraphView, i: int, labels: dict[str, str]) -> str:
    """Name (when it says more than the id), then id and numbers: short, since it is sent for every node (half the
    figure's JSON); the detail panel has the rest."""
    n = view.graph.nodes[i]
    name = display_name(n, labels)
    facts = [n.id]
    if n.activation is not None:
        facts.append(f"{'norm' if n.kind is NodeKind.ERROR else 'act'} {n.activation:.3g}")
    if n.probability is not None:
        facts.append(f"p {n.probability:.3f}")
    facts.append(f"infl {n.influence:.3g}")
    head = [] if name == f"F{n.layer}.{n.feature}" else [plotly_text(name)]
    return "<br>".join([*head, " · ".join(facts)])


def _node_trace(view: GraphView, co: Coordinates, kind: NodeKind, sizes: np.ndarray, labels: dict) -> dict:
    rows = np.flatnonzero(view.kind == kind.code)
    return dict(
        type="scattergl", mode="markers", name=kind.value, x=co.x[rows].round(4), y=co.y[rows].round(4),
        customdata=[view.graph.nodes[i].id for i in rows], hovertext=[hover_text(view, int(i), labels) for i in rows],
        hoverinfo="text", marker=dict(symbol=GLYPH[kind], size=sizes[rows].round(1), color=COLOR[kind],
                                      line=dict(width=0.5, color="#ffffff")),
    )  # fmt: skip


# 3. labels


def label_trace(co: Coordinates, sizes: np.ndarray, placed: Placement) -> dict:
    """The placed labels as SVG text: an invisible marker of the node's size carries each, so plotly keeps the
    text beside the node at any zoom; no hover or click of its own (the node under it gets them)."""
    rows = np.asarray(placed.rows, dtype=np.int64)
    return dict(type="scatter", mode="markers+text", name="labels", x=co.x[rows], y=co.y[rows],
                text=[plotly_text(t) for t in placed.text], textposition=list(placed.position), hoverinfo="skip",
                textfont=LABEL_FONT, marker=dict(size=sizes[rows], opacity=0), cliponaxis=False)  # fmt: skip


def placement(view: GraphView, co: Coordinates, labels: dict[str, str], auto: dict[str, str]) -> Placement:
    """Which nodes carry a label and on which side (viewer.labels), at the default plot size."""
    px, py = co.to_px()
    return place(view, px, py, marker_sizes(view), candidates(view, labels, auto))


# 4. overlay


class Overlay(NamedTuple):
    edges: list[tuple[np.ndarray, np.ndarray]]  # per edge trace: x, y with NaN gaps between segments
    pinned: tuple[np.ndarray, np.ndarray]
    search: tuple[np.ndarray, np.ndarray]
    clicked: tuple[np.ndarray, np.ndarray]

    def traces(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Overlay trace index -> (x, y)."""
        out = {OverlayTrace.EDGE_FIRST + k: xy for k, xy in enumerate(self.edges)}
        return out | {int(OverlayTrace.PINNED): self.pinned, int(OverlayTrace.SEARCH): self.search,
                      int(OverlayTrace.CLICKED): self.clicked}  # fmt: skip


def edge_bin(wnorm: np.ndarray) -> np.ndarray:
    """[n] edge trace index: sign block (positive first) + √-scaled |pctInput| bin."""
    mag = np.sqrt(np.minimum(np.abs(wnorm), PCT_CLAMP) / PCT_CLAMP)
    b = np.minimum((mag * N_BINS).astype(np.int64), N_BINS - 1)
    return np.where(wnorm >= 0, b, N_BINS + b)


@functools.cache  # plotly's colorscale lookup costs ~18 ms a call: most of a view's CPU under load
def edge_style(k: int) -> tuple[str, float]:
    """Colour and width of edge trace k."""
    sign, b = (1, k) if k < N_BINS else (-1, k - N_BINS)
    strength = (b + 1) / N_BINS
    return str(sample_colorscale("PRGn", [0.5 + sign * (0.2 + 0.3 * strength)])[0]), 0.5 + 2.5 * strength


def _segments(co: Coordinates, src: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gap = np.full(len(src), np.nan)
    return np.column_stack([co.x[src], co.x[tgt], gap]).ravel(), np.column_stack([co.y[src], co.y[tgt], gap]).ravel()


def _points(view: GraphView, co: Coordinates, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    rows = [view.row[i] for i in ids if i in view.row]
    return co.x[rows], co.y[rows]


def focus_edges(view: GraphView, clicked: str | None, pinned: list[str], link_type: LinkType,
                all_pinned_edges: bool = False) -> np.ndarray:  # fmt: skip
    """Edge indices drawn: the clicked node's (by link type) and the pinned nodes' — only those between two
    pinned nodes, unless all_pinned_edges (then all of theirs, by link type)."""
    inputs, outputs = link_type is not LinkType.OUTPUT, link_type is not LinkType.INPUT
    pins = [view.row[i] for i in dict.fromkeys(pinned) if i in view.row]
    parts = [view.edges_of([view.row[clicked]], inputs, outputs)] if clicked in view.row else []
    if all_pinned_edges:
        parts.append(view.edges_of(pins, inputs, outputs))
    elif pins:
        inside = np.zeros(view.n_nodes, dtype=bool)
        inside[pins] = True
        into = view.edges_of(pins, inputs=True, outputs=False)
        parts.append(into[inside[view.src[into]]])
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def overlay(view: GraphView, co: Coordinates, clicked: str | None, pinned: list[str], search: list[str],
            link_type: LinkType, all_pinned_edges: bool = False) -> Overlay:  # fmt: skip
    edges = focus_edges(view, clicked, pinned, link_type, all_pinned_edges)
    bins = edge_bin(view.wnorm[edges])
    per_bin = [_segments(co, view.src[edges[bins == k]], view.tgt[edges[bins == k]]) for k in range(2 * N_BINS)]
    return Overlay(per_bin, _points(view, co, pinned), _points(view, co, search),
                   _points(view, co, [clicked] if clicked else []))  # fmt: skip


def hover_edges(view: GraphView, co: Coordinates, node: str | None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Overlay trace index -> (x, y) of the hovered node's positive and negative edges (empty for None)."""
    edges = view.edges_of([view.row[node]], True, True) if node in view.row else np.zeros(0, dtype=np.int64)
    pos = view.weight[edges] >= 0
    return {int(OverlayTrace.HOVER_POS): _segments(co, view.src[edges[pos]], view.tgt[edges[pos]]),
            int(OverlayTrace.HOVER_NEG): _segments(co, view.src[edges[~pos]], view.tgt[edges[~pos]])}  # fmt: skip


def _axes(view: GraphView, co: Coordinates, ticks: bool) -> dict:
    """Both figures share these axes (explicit ranges, so the overlay lines up before any zoom)."""
    meta = view.graph.metadata
    common = dict(zeroline=False, showticklabels=ticks, ticks="", showgrid=False)
    layer_ticks = ["Emb", *(f"L{i}" for i in range(meta.n_layers)), "Lgt"]
    return dict(
        margin=MARGIN, xaxis=dict(range=list(co.x_range), tickvals=co.col_center,
                                  ticktext=[plotly_text(t) for t in meta.tokens], tickangle=-40, **common),
        yaxis=dict(range=list(co.y_range), tickvals=list(range(co.n_rows)), ticktext=layer_ticks,
                   **common | dict(showgrid=ticks, gridcolor="#f0f0f0")),
    )  # fmt: skip


def main_figure(view: GraphView, co: Coordinates, labels: dict[str, str], revision: str,
                placed: Placement | None = None) -> dict:  # fmt: skip
    """Every node, in WebGL (NodeTrace order), and the placed labels; `revision` keeps zoom/pan across redraws."""
    sizes = marker_sizes(view)
    data = [_node_trace(view, co, k, sizes, labels) for k in KIND_ORDER]
    data.append(label_trace(co, sizes, placed or Placement((), (), ())))
    layout = dict(uirevision=revision, showlegend=False, hovermode="closest", dragmode="pan", clickmode="event",
                  plot_bgcolor="#ffffff", paper_bgcolor="#ffffff", **_axes(view, co, ticks=True))  # fmt: skip
    return dict(data=data, layout=layout)


def _ring(name: str, xy: tuple[np.ndarray, np.ndarray]) -> dict:
    color, size = RING[name]
    return dict(type="scatter", mode="markers", name=name, x=xy[0], y=xy[1], hoverinfo="skip",
                marker=dict(symbol="circle-open", size=size, color=color, line=dict(width=2, color=color)))  # fmt: skip


def overlay_figure(view: GraphView, co: Coordinates, ov: Overlay) -> dict:
    """Edges, rings and hover edges (OverlayTrace order) in SVG on a transparent plot with the main figure's axes:
    a click or hover redraws only this small figure, never the WebGL nodes."""
    data = []
    for k, (x, y) in enumerate(ov.edges):
        color, width = edge_style(k)
        data.append(dict(type="scatter", mode="lines", x=x, y=y, hoverinfo="skip", opacity=0.8,
                         line=dict(color=color, width=width)))  # fmt: skip
    data += [_ring("pinned", ov.pinned), _ring("search", ov.search), _ring("clicked", ov.clicked)]
    data += [dict(type="scatter", mode="lines", x=[], y=[], hoverinfo="skip", opacity=0.9,
                  line=dict(color=c, width=1.5, dash="dot")) for c in HOVER_COLOR]  # fmt: skip
    layout = dict(showlegend=False, plot_bgcolor="rgba(0,0,0,0)", paper_bgcolor="rgba(0,0,0,0)",
                  **_axes(view, co, ticks=False))  # fmt: skip
    return dict(data=data, layout=layout)
