"""Figures for papers: the whole graph or the pinned subgraph as SVG or PNG, with edges, labels and a legend,
drawn with matplotlib (no browser; text stays text in the SVG; `$` is never read as math).

1. graph: every node at the viewer's coordinates (glyph and colour by kind, area by influence); edges among the
   pinned nodes (else among the labelled ones: logits and the top features), PRGn by pctInput with the viewer's
   width bins; labels placed by viewer.labels for this figure's plot size; tokens under the columns, layers at
   the side.
2. subgraph: the pinned nodes at the subgraph panel's positions (one row per layer), supernodes as labelled
   boxes around their members, summed edges as arrows with width by |Σ pctInput|.
3. legend (node kinds, edge signs) and file: SVG or PNG by the output's suffix, written atomically.
"""

from __future__ import annotations

import io
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tracer.errors import ConfigError
from tracer.io import atomic_write_bytes
from tracer.layout import KIND_ORDER, NodeKind
from viewer.figures import COLOR, N_BINS, coordinates, edge_bin, edge_style, marker_sizes
from viewer.labels import Placement, candidates, place
from viewer.model import GraphView
from viewer.state import GROUP_PREFIX, UrlState
from viewer.subgraph import Y_STEP, item_of, layer_row, subgraph_elements

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORMATS = ("svg", "png")
MPL_MARKER = {NodeKind.FEATURE: "o", NodeKind.ERROR: "D", NodeKind.EMBEDDING: "s", NodeKind.LOGIT: "s"}
KIND_NAME = {NodeKind.FEATURE: "feature", NodeKind.ERROR: "error", NodeKind.EMBEDDING: "token",
             NodeKind.LOGIT: "output logit"}  # fmt: skip
RC = {"svg.fonttype": "none", "text.parse_math": False, "font.size": 9, "font.family": "sans-serif"}
MARGIN_IN = (0.7, 0.2, 0.3, 0.9)  # left, right, top, bottom margins of the graph plot (inches)


class FigureKind(StrEnum):
    GRAPH = "graph"
    SUBGRAPH = "subgraph"


def figure_format(path: str | Path) -> str:
    """'svg' or 'png' from the output's suffix; ConfigError for anything else (checked before drawing)."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ConfigError(f"figure output must end in .svg or .png, not {Path(path).name!r}")
    return fmt


def mpl_color(plotly_rgb: str) -> str:
    """'rgb(r, g, b)' (plotly's colour scales) -> '#rrggbb'."""
    if not plotly_rgb.startswith("rgb("):
        return plotly_rgb
    r, g, b = (round(float(v)) for v in plotly_rgb[4:-1].split(","))
    return f"#{r:02x}{g:02x}{b:02x}"


def _pt(px: np.ndarray | float) -> np.ndarray | float:
    """Plotly marker diameter (px) -> matplotlib scatter size (points², at 72 px per inch)."""
    return np.square(px) * 0.9


def _legend(ax: Axes, kinds: set[NodeKind], edges: bool) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker=MPL_MARKER[k], color="none", markerfacecolor=COLOR[k], markersize=7,
                      label=KIND_NAME[k]) for k in KIND_ORDER if k in kinds]  # fmt: skip
    if edges:
        pos, neg = mpl_color(edge_style(N_BINS - 1)[0]), mpl_color(edge_style(2 * N_BINS - 1)[0])
        handles += [Line2D([], [], color=pos, lw=2, label="excitatory edge"),
                    Line2D([], [], color=neg, lw=2, label="inhibitory edge")]  # fmt: skip
    ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=True, framealpha=0.9)


# 1. graph


def _graph_edges(view: GraphView, rows: list[int]) -> np.ndarray:
    inside = np.zeros(view.n_nodes, dtype=bool)
    inside[rows] = True
    into = view.edges_of(rows, inputs=True, outputs=False)
    return into[inside[view.src[into]]]


def draw_graph(ax: Axes, view: GraphView, state: UrlState, plot_px: tuple[float, float],
               auto: dict[str, str] | None = None) -> Placement:  # fmt: skip
    co = coordinates(view)
    sizes = marker_sizes(view)
    px, py = co.to_px(plot_px)
    placed = place(view, px, py, sizes, candidates(view, state.labels, auto or {}))
    pinned = [view.row[p] for p in state.pinned if p in view.row]
    edges = _graph_edges(view, pinned if len(pinned) >= 2 else list(placed.rows))
    bins = edge_bin(view.wnorm[edges])
    for k in range(2 * N_BINS):  # weakest first, so strong edges lie on top
        sel = edges[bins == k]
        color, width = edge_style(k)
        color = mpl_color(color)
        xs = np.column_stack([co.x[view.src[sel]], co.x[view.tgt[sel]], np.full(len(sel), np.nan)]).ravel()
        ys = np.column_stack([co.y[view.src[sel]], co.y[view.tgt[sel]], np.full(len(sel), np.nan)]).ravel()
        ax.plot(xs, ys, color=color, lw=width * 0.75, alpha=0.8, zorder=1, solid_capstyle="round")
    for kind in KIND_ORDER:
        r = np.flatnonzero(view.kind == kind.code)
        ax.scatter(co.x[r], co.y[r], s=_pt(sizes[r]), marker=MPL_MARKER[kind], c=COLOR[kind], edgecolors="white",
                   linewidths=0.4, zorder=2)  # fmt: skip
    for i in pinned:
        ax.scatter([co.x[i]], [co.y[i]], s=_pt(sizes[i] + 6), facecolors="none", edgecolors="#e4572e", lw=1.2, zorder=3)
    offset = {"middle right": (1, 0, "left", "center"), "middle left": (-1, 0, "right", "center"),
              "top center": (0, 1, "center", "bottom"), "bottom center": (0, -1, "center", "top")}  # fmt: skip
    for i, text, side in zip(placed.rows, placed.text, placed.position, strict=True):
        dx, dy, ha, va = offset[side]
        r = sizes[i] / 2 + 1
        ax.annotate(text, (co.x[i], co.y[i]), xytext=(dx * r, dy * r), textcoords="offset points", ha=ha, va=va,
                    fontsize=8, color="#222222", zorder=4)  # fmt: skip
    meta = view.graph.metadata
    ax.set_xlim(*co.x_range)
    ax.set_ylim(*co.y_range)
    ax.set_xticks(co.col_center, meta.tokens, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(co.n_rows), ["Emb", *(f"L{i}" for i in range(meta.n_layers)), "Lgt"], fontsize=8)
    ax.tick_params(length=0)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    ax.grid(axis="y", color="#eeeeee", lw=0.6, zorder=0)
    _legend(ax, {NodeKind(k) for k in KIND_ORDER if (view.kind == k.code).any()}, len(edges) > 0)
    return placed


# 2. subgraph


def draw_subgraph(ax: Axes, view: GraphView, state: UrlState) -> None:
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    if not item_of(state, view):
        raise ConfigError("a subgraph figure needs pinned nodes present in the graph (--pinned ID,ID,...)")
    els = subgraph_elements(view, state)
    nodes = {e["data"]["id"]: e for e in els if "source" not in e["data"]}
    xy = {i: (e["position"]["x"], -e["position"]["y"]) for i, e in nodes.items()}
    groups = [i for i in nodes if i.startswith(GROUP_PREFIX)]
    for g in groups:  # 2. a labelled box around the members
        ms = nodes[g]["data"]["members"]
        xs, ys = [xy[m][0] for m in ms], [xy[m][1] for m in ms]
        x0, x1, y0, y1 = min(xs) - 24, max(xs) + 24, min(ys) - 30, max(ys) + 18
        ax.add_patch(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=4", fc="#efe9f7", ec="#7a5ea8",
                                    lw=1.5, zorder=1))  # fmt: skip
        ax.text((x0 + x1) / 2, y1 + 8, nodes[g]["data"]["label"], ha="center", va="bottom", fontsize=10,
                fontweight="bold", color="#3d2a66", zorder=5)  # fmt: skip
        xy[g] = ((x0 + x1) / 2, (y0 + y1) / 2)
    for e in (e["data"] for e in els if "source" in e["data"]):
        ax.add_patch(FancyArrowPatch(xy[e["source"]], xy[e["target"]], arrowstyle="-|>", mutation_scale=10,
                                     color=e["color"], lw=e["width"] * 0.6, alpha=0.8, shrinkA=12, shrinkB=12,
                                     connectionstyle="arc3,rad=0.08", zorder=2))  # fmt: skip
    kinds = set()
    for i, e in nodes.items():
        if i.startswith(GROUP_PREFIX):
            continue
        kind = NodeKind(e["data"]["kind"])
        kinds.add(kind)
        member = bool(e["data"].get("parent"))
        ax.scatter([xy[i][0]], [xy[i][1]], s=90 if member else 160, marker=MPL_MARKER[kind], c=COLOR[kind],
                   edgecolors="white", linewidths=0.6, zorder=3)  # fmt: skip
        ax.text(xy[i][0], xy[i][1] - 14, e["data"]["label"], ha="right" if member else "center", va="top",
                fontsize=7 if member else 9, rotation=30 if member else 0, rotation_mode="anchor",
                zorder=4)  # fmt: skip
    xs = [p[0] for p in xy.values()]
    ys = [p[1] for p in xy.values()]
    top = view.graph.metadata.n_layers + 1
    names = {0: "Emb", top: "Lgt", **{r + 1: f"L{r}" for r in range(top - 1)}}
    for row in {layer_row(view, i) for i in item_of(state, view)}:  # the layer of each row, at the left
        ax.text(min(xs) - 100, -(top - row) * Y_STEP, names[row], ha="left", va="center", fontsize=8, color="#888")
    ax.set_xlim(min(xs) - 110, max(xs) + 110)
    ax.set_ylim(min(ys) - 50, max(ys) + 50)
    ax.set_axis_off()
    _legend(ax, kinds, any("source" in e["data"] for e in els))


# 3. file


def render(view: GraphView, state: UrlState, kind: FigureKind, fmt: str, width_in: float = 10.0,
           height_in: float = 6.0, dpi: int = 200, auto: dict[str, str] | None = None) -> bytes:  # fmt: skip
    """The figure as SVG or PNG bytes, `width_in` x `height_in` inches (PNG at `dpi`)."""
    if fmt not in FORMATS:
        raise ConfigError(f"figure format must be svg or png, not {fmt!r}")
    if not (1 <= width_in <= 60 and 1 <= height_in <= 60 and 30 <= dpi <= 1200):
        raise ConfigError("figure size must be 1-60 inches a side, dpi 30-1200")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    with plt.rc_context(RC):  # type: ignore[arg-type]
        fig: Figure = plt.figure(figsize=(width_in, height_in))
        try:
            left, right, top, bottom = MARGIN_IN
            ax = fig.add_axes((left / width_in, bottom / height_in, 1 - (left + right) / width_in,
                               1 - (top + bottom) / height_in))  # fmt: skip
            if kind is FigureKind.GRAPH:
                plot_px = ((width_in - left - right) * 72, (height_in - top - bottom) * 72)  # offsets are in points
                draw_graph(ax, view, state, plot_px, auto)
            else:
                draw_subgraph(ax, view, state)
            ax.set_title(view.graph.metadata.prompt, fontsize=10, loc="left")
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=dpi, metadata={"Creator": "clt-tracer"} if fmt == "png" else None)
        finally:
            plt.close(fig)
    return buf.getvalue()


def write_figure(path: str | Path, view: GraphView, state: UrlState, kind: FigureKind, **size) -> Path:
    return atomic_write_bytes(path, render(view, state, kind, figure_format(path), **size))
