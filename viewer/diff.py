"""Viewer diff mode: two graphs side by side, every node coloured by how it changed (tracer.compare.diff).

1. colours: a node only in its own graph is orange; a shared node is green when its influence grew from A to B,
   red when it fell, shaded by |Δ| relative to its larger influence; grey when the change is under 10 %.
2. figures: each graph at the viewer's coordinates (viewer.figures.coordinates) with its pruned edges as thin grey
   lines and the nodes as markers coloured by 1, hover text "key: influence A -> B".
3. app: one Dash page with the two figures and the text summary, served on loopback like `tracer view`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracer.compare import GraphDiff, format_diff, keyed
from tracer.schema import GraphFile
from viewer.figures import coordinates
from viewer.model import GraphView

ONLY = "#f28e2b"  # in this graph only
SAME = "#b0b0b0"  # shared, |Δ| under UNCHANGED of the larger influence
UNCHANGED = 0.1


def node_colours(graph: GraphFile, d: GraphDiff) -> list[str]:
    """1. One colour per node of `graph` (one of the diff's two graphs)."""
    changes = {n.key: n for n in d.nodes}
    k = keyed(graph, d.align)
    out = []
    for n in graph.nodes:
        c = changes.get(k.key_of[n.id])
        if c is None or c.a is None or c.b is None:
            out.append(ONLY)
            continue
        big = max(abs(c.a), abs(c.b), 1e-12)
        rel = min(1.0, abs(c.delta) / big)
        if rel < UNCHANGED:
            out.append(SAME)
            continue
        shade = int(200 - 160 * rel)
        out.append(f"rgb({shade},200,{shade})" if c.delta > 0 else f"rgb(220,{shade},{shade})")
    return out


def _hover(graph: GraphFile, d: GraphDiff) -> list[str]:
    changes = {n.key: n for n in d.nodes}
    k = keyed(graph, d.align)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    return [f"{key} {n.label or n.token or ''}: {fmt(changes[key].a)} -> {fmt(changes[key].b)}"
            for n in graph.nodes for key in [k.key_of[n.id]]]  # fmt: skip


def diff_figure(graph: GraphFile, d: GraphDiff, title: str) -> dict:
    """2. A plotly figure dict of one side of the diff."""
    view = GraphView.build(graph)
    co = coordinates(view)
    xs, ys = np.full(3 * len(view.src), np.nan), np.full(3 * len(view.src), np.nan)
    xs[0::3], xs[1::3] = co.x[view.src], co.x[view.tgt]
    ys[0::3], ys[1::3] = co.y[view.src], co.y[view.tgt]
    meta = graph.metadata
    edges = dict(type="scatter", mode="lines", x=xs.tolist(), y=ys.tolist(), hoverinfo="skip",
                 line=dict(color="#dddddd", width=0.7))  # fmt: skip
    nodes = dict(type="scatter", mode="markers", x=co.x.tolist(), y=co.y.tolist(), text=_hover(graph, d),
                 hoverinfo="text", marker=dict(color=node_colours(graph, d), size=9,
                                               line=dict(color="#555555", width=0.5)))  # fmt: skip
    layout = dict(title=dict(text=title), showlegend=False, hovermode="closest", plot_bgcolor="#ffffff",
                  margin=dict(l=40, r=10, t=40, b=80),
                  xaxis=dict(tickvals=co.col_center.tolist(), ticktext=meta.tokens, tickangle=-40, showgrid=False,
                             zeroline=False),
                  yaxis=dict(tickvals=list(range(co.n_rows)), ticktext=["Emb", *(f"L{i}" for i in
                             range(meta.n_layers)), "Lgt"], zeroline=False))  # fmt: skip
    return dict(data=[edges, nodes], layout=layout)


def create_diff_app(a: GraphFile, b: GraphFile, d: GraphDiff, names: tuple[str, str] = ("A", "B"), top: int = 10):
    """3. The Dash app of the diff page; its text summary shows `top` rows per section (`tracer diff --top`)."""
    from dash import Dash, dcc, html

    app = Dash(__name__, serve_locally=True, title="clt-tracer diff", update_title="")
    legend = [html.Span("■ only in this graph ", style={"color": ONLY}),
              html.Span("■ influence up A→B ", style={"color": "rgb(40,200,40)"}),
              html.Span("■ influence down ", style={"color": "rgb(220,40,40)"}),
              html.Span("■ unchanged (<10 %)", style={"color": SAME})]  # fmt: skip
    half = {"width": "50%", "display": "inline-block", "verticalAlign": "top"}
    app.layout = html.Div([
        html.H3(f"{names[0]} vs {names[1]}"), html.Div(legend),
        html.Div([dcc.Graph(id="diff-a", figure=diff_figure(a, d, f"A: {a.metadata.prompt}"), style=half),
                  dcc.Graph(id="diff-b", figure=diff_figure(b, d, f"B: {b.metadata.prompt}"), style=half)]),
        html.Pre(format_diff(d, top=top)),
    ])  # fmt: skip
    return app


def serve_diff(a_path: Path, b_path: Path, a: GraphFile, b: GraphFile, d: GraphDiff, host: str, port: int,
               top: int = 10) -> None:  # fmt: skip
    app = create_diff_app(a, b, d, (a_path.name, b_path.name), top)
    print(f"diff viewer: http://{host}:{port}/  (Ctrl-C to stop)")
    app.run(host=host, port=port, debug=False)
