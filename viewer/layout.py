"""Dash components as pure functions of data (no callbacks, no state). All user text goes in as plain strings,
which Dash renders as text, never as HTML.

1. app_layout: the static page skeleton (stores, picker, error card, graph page).
2. picker: a folder's graph files with prompt, model, date and scores.
3. header and scores: what the open graph is, and how well the replacement explains it.
4. panels: detail (per kind, with the feature-store plug-in), connections (clickable rows), search results.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import dash_cytoscape as cyto
from dash import dcc, html

from tracer.layout import NodeKind
from tracer.schema import GraphNode, Scores
from viewer.feature_panel import feature_dashboard
from viewer.features import FeatureDescription, logit_effects
from viewer.ids import NODE_ATTR, Id, LinkType, QueryKey
from viewer.intervene import intervene_panel
from viewer.model import Connections, GraphView, Link, display_name
from viewer.state import ALL_EDGES
from viewer.subgraph import STYLESHEET

THRESHOLD_MARKS = {0.5: "0.5", 0.8: "0.8", 0.9: "0.9", 1.0: "1"}


# 1. skeleton


def _button(id_: Id, text: str, title: str = "") -> html.Button:
    return html.Button(text, id=id_.value, n_clicks=0, title=title, className="btn")


def _controls() -> html.Div:
    return html.Div(className="controls", children=[
        html.Label(["Node threshold", dcc.Slider(id=Id.THRESHOLD.value, min=0.3, max=1.0, step=0.01, value=0.8,
                                                 marks=THRESHOLD_MARKS, updatemode="mouseup",
                                                 tooltip={"placement": "bottom"})], className="slider"),
        html.Label(["Edges", dcc.RadioItems(id=Id.LINK_TYPE.value, value=LinkType.BOTH.value, inline=True,
                                            options=[{"label": t.value.title(), "value": t.value}
                                                     for t in LinkType])]),
        html.Label(dcc.Checklist(id=Id.PINNED_EDGES.value, value=[], inline=True,
                                 options=[{"label": "all edges of pinned nodes", "value": ALL_EDGES}]),
                   title="off: only the edges among the pinned nodes are drawn"),
        dcc.Input(id=Id.SEARCH.value, type="search", debounce=True, className="search",
                  placeholder="search: node id, token, word, label, or layer/feature"),
        _button(Id.SAVE_BUTTON, "Save", "write pins, groups, labels and threshold into the graph file"),
        _button(Id.EXPORT_JSON, "Graph JSON"),
        _button(Id.EXPORT_NEURONPEDIA, "Neuronpedia JSON"),
        html.Span(id=Id.STATUS.value, className="status", role="status"),
    ])  # fmt: skip


def _subgraph() -> html.Div:
    return html.Div(className="subgraph-row", children=[
        html.Div(className="subgraph-box", children=[
            html.Div(id=Id.SUBGRAPH_SCORES.value, className="subgraph-scores"),
            cyto.Cytoscape(id=Id.SUBGRAPH.value, elements=[], layout={"name": "preset", "fit": True, "padding": 30},
                           stylesheet=STYLESHEET, boxSelectionEnabled=True, minZoom=0.2, maxZoom=2.0,
                           className="subgraph", style={"width": "100%", "height": "640px"})]),
        html.Div(className="subgraph-side", children=[
            html.H4("Pinned"),
            dcc.Checklist(id=Id.PINNED_LIST.value, options=[], value=[], className="pinned-list"),
            html.Div(className="row", children=[
                _button(Id.GROUP_BUTTON, "Group", "merge the checked nodes into a supernode"),
                _button(Id.UNGROUP_BUTTON, "Ungroup"), _button(Id.UNPIN_BUTTON, "Unpin")]),
            html.Div(className="row", children=[
                dcc.Input(id=Id.LABEL_INPUT.value, type="text", placeholder="label", className="label-input"),
                _button(Id.LABEL_BUTTON, "Set label", "rename checked supernodes / relabel checked or clicked node")]),
            html.Div(className="row", children=[html.Span("Panel as shown:"), _button(Id.EXPORT_PNG, "PNG")]),
            html.Div(className="row", children=[
                html.Span("Paper figure:"),
                dcc.RadioItems(id=Id.FIGURE_KIND.value, value="graph", inline=True,
                               options=[{"label": "graph", "value": "graph"},
                                        {"label": "subgraph", "value": "subgraph"}]),
                dcc.Input(id=Id.FIGURE_SIZE.value, value="10x6", type="text", className="size-input", debounce=True,
                          placeholder="WxH in"),
                _button(Id.FIGURE_SVG, "SVG", "edges, labels and a legend, as drawn by `tracer figure`"),
                _button(Id.FIGURE_PNG, "PNG", "edges, labels and a legend, at 200 dpi")]),
            intervene_panel(),
        ]),
    ])  # fmt: skip


def app_layout() -> html.Div:
    return html.Div(className="app", children=[
        dcc.Location(id=Id.URL.value, refresh=False),
        *(dcc.Store(id=i.value) for i in (Id.CLICK_EVENT, Id.KEY_EVENT, Id.RENDERED, Id.LISTENERS, Id.AXES_SYNC,
                                                  Id.SUBGRAPH_FIT, Id.HOVER_EVENT)),
        dcc.Download(id=Id.DOWNLOAD.value),
        html.Div(id=Id.URL_NOTE.value, className="url-note", role="status", style={"display": "none"}, children=[
            html.Span(id=Id.URL_NOTE_TEXT.value),
            html.Button("×", id=Id.URL_NOTE_CLOSE.value, n_clicks=0, className="close", title="dismiss")]),
        html.Div(id=Id.ERROR_CARD.value),
        html.Div(id=Id.PICKER.value),
        html.Div(id=Id.GRAPH_PAGE.value, style={"display": "none"}, children=[
            html.Div(id=Id.HEADER.value, className="header"),
            _controls(),
            html.Div(id=Id.SCORES.value, className="scores"),
            html.Div(className="main-row", children=[
                html.Div(className="graph-stack", children=[
                    dcc.Graph(id=Id.MAIN_GRAPH.value, className="main-graph", responsive=True, clear_on_unhover=True,
                              config={"displaylogo": False, "scrollZoom": True}, style={"height": "560px"}),
                    dcc.Graph(id=Id.OVERLAY_GRAPH.value, className="overlay-graph", responsive=True,
                              config={"staticPlot": True}, style={"height": "560px"}),
                ]),
                html.Div(className="side", children=[
                    _button(Id.PIN_BUTTON, "Pin", "pin or unpin the clicked node (or Ctrl/Cmd-click it)"),
                    html.Div(id=Id.DETAIL.value, className="panel"),
                    html.Div(id=Id.CONNECTIONS.value, className="panel"),
                    html.Div(id=Id.SEARCH_RESULTS.value, className="panel"),
                ]),
            ]),
            _subgraph(),
        ]),
    ])  # fmt: skip


# 2. picker


def _fmt(score: float | None) -> str:
    return "" if score is None else f"{score:.3f}"


def picker(entries: list, folder: str) -> html.Div:
    """Rows link to `?graph=ID`; every cell is plain text."""
    head = html.Tr([html.Th(h) for h in ("graph", "prompt", "model", "date", "replacement", "completeness",
                                          "nodes")])  # fmt: skip
    rows = []
    for e in entries:
        link = dcc.Link(e.graph_id, href=f"?{QueryKey.GRAPH.value}={quote(e.graph_id)}", className="graph-link")
        if e.error:
            rows.append(html.Tr([html.Td(link), html.Td(e.error, colSpan=6, className="error")]))
            continue
        s: Scores | None = e.scores
        rows.append(html.Tr([html.Td(link), html.Td(e.prompt), html.Td(e.model), html.Td(e.created[:19]),
                             html.Td(_fmt(s and s.replacement)), html.Td(_fmt(s and s.completeness)),
                             html.Td(str(e.n_nodes))]))  # fmt: skip
    empty = [html.P('No graph files here. Make one with: tracer trace "your prompt" -o FOLDER/NAME.json')]
    return html.Div(className="picker", children=[
        html.H2(f"Graphs in {folder}"), html.Table([head, *rows]) if rows else empty[0]])  # fmt: skip


def error_card(message: str) -> html.Div:
    return html.Div(className="error-card", role="alert",
                    children=[html.H3("Cannot show this graph"), html.P(message)])  # fmt: skip


# 3. header and scores


def header(view: GraphView, graph_id: str, folder_mode: bool, threshold: float | None) -> list:
    m = view.graph.metadata
    pruned = f"re-pruned at {threshold:g}" if threshold is not None else "as saved"
    items = [html.H2(m.prompt, className="prompt"),
             html.Span(f"{graph_id} · model {m.model.name} · transcoders {m.transcoders.name} · {m.created[:19]} · "
                       f"{len(view.graph.nodes)} nodes, {len(view.graph.edges)} edges ({pruned}; "
                       f"{m.n_nodes_unpruned} / {m.n_edges_unpruned} unpruned)", className="meta")]  # fmt: skip
    if folder_mode:
        items.insert(0, dcc.Link("← all graphs", href="?", className="back"))
    return items


def scores_panel(whole: Scores, pruned: Scores | None, sub: Scores | None, n_members: int, note: str = "") -> list:
    def cell(name: str, s: Scores | None) -> html.Span:
        text = "—" if s is None else f"replacement {s.replacement:.3f} · completeness {s.completeness:.3f}"
        return html.Span([html.B(name + ": "), text], className="score")

    sub_name = f"pinned subgraph ({n_members} feature{'' if n_members == 1 else 's'})"
    out = [cell("unpruned", whole), cell("pruned", pruned), cell(sub_name, sub)]
    return out + ([html.Span(note, className="note")] if note else [])


def subgraph_scores(sub: Scores | None, n_features: int, any_pinned: bool) -> list:
    """The line over the subgraph panel: what the pinned features alone explain."""
    if not any_pinned:
        return [html.Span("Pin nodes (Pin button or Ctrl/Cmd-click) to build a subgraph here.", className="note")]
    head = html.B(f"Subgraph of {n_features} feature{'' if n_features == 1 else 's'}: ")
    if sub is None:
        return [head, html.Span("scores need the adjacency sidecar and at least one pinned feature", className="note")]
    return [head, f"replacement {sub.replacement:.3f} · completeness {sub.completeness:.3f}"]


# 4. panels


def _kv(rows: list[tuple[str, str]]) -> html.Table:
    return html.Table([html.Tr([html.Th(k), html.Td(v)]) for k, v in rows], className="kv")


def _shaded(example) -> html.Div:
    peak = max((abs(a) for a in example.activations), default=0.0) or 1.0
    return html.Div(className="example", children=[
        html.Span(t, title=f"{a:.3g}", style={"backgroundColor": f"rgba(208,140,60,{abs(a) / peak:.2f})"})
        for t, a in zip(example.tokens, example.activations, strict=False)])  # fmt: skip


def _histogram(hist: tuple[list[float], list[int]]) -> html.Div:
    edges, counts = hist
    top = max(counts, default=0) or 1
    return html.Div(className="histogram", children=[
        html.Div(className="bar", title=f"{lo:.3g}–{hi:.3g}: {c}", style={"height": f"{40 * c / top:.0f}px"})
        for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=False)])  # fmt: skip


def _token_list(title: str, items: list[tuple[str, float]]) -> list:
    if not items:
        return []
    return [html.H5(title), html.Ul([html.Li([html.Code(t), f" {v:+.3g}"]) for t, v in items])]


def _feature_details(node: GraphNode, view: GraphView, desc: FeatureDescription | None) -> list:
    out = _token_list("Direct effects on output logits (this graph)", logit_effects(view, node.id))
    if desc is None:
        return out + [html.P("No feature store: top-activating examples unavailable.", className="note")]
    return out + feature_dashboard(desc)


def influence_share(view: GraphView, node: GraphNode) -> float:
    """The node's influence as a share of all non-logit nodes' influence in this graph."""
    total = sum(n.influence for n in view.graph.nodes if n.kind is not NodeKind.LOGIT)
    return node.influence / total if total > 0 else 0.0


def detail_panel(node: GraphNode | None, view: GraphView, labels: dict[str, str],
                 desc: FeatureDescription | None = None) -> list:  # fmt: skip
    if node is None:
        return [html.P("Click a node to see its details.", className="note")]
    tokens = view.graph.metadata.tokens
    where = tokens[node.pos] if 0 <= node.pos < len(tokens) else "?"
    rows = [("kind", node.kind.value), ("layer", str(node.layer)), ("position", f"{node.pos} ({where!r})")]
    extra: list = []
    match node.kind:
        case NodeKind.FEATURE:
            rows += [("feature", str(node.feature)), ("activation", f"{node.activation or 0:.4g}")]
            extra = _feature_details(node, view, desc)
        case NodeKind.LOGIT:
            rows += [("token", repr(node.token)), ("probability", f"{node.probability or 0:.4f}")]
        case NodeKind.ERROR:
            rows += [("error norm", f"{node.activation or 0:.4g}"),
                     ("share of graph influence", f"{influence_share(view, node):.2%}")]  # fmt: skip
        case NodeKind.EMBEDDING:
            rows += [("token", repr(node.token)), ("token id", str(node.token_id))]
    rows.append(("influence", f"{node.influence:.4g}"))
    target = view.graph.metadata.effects_target
    if node.signed_effect is not None and node.target_influence is not None and node.kind is not NodeKind.LOGIT:
        rows += [(f"influence on {target!r}", f"{node.target_influence:.4g}"),
                 (f"signed effect on {target!r}", f"{node.signed_effect:+.4g}")]  # fmt: skip
    return [html.H3(display_name(node, labels), className="node-title"), _kv(rows), *extra]


def node_link(node_id: str, name: str, extra: list | None = None) -> html.Button:
    """A row that selects `node_id` when clicked (Ctrl/Cmd-click pins it): no Dash id, so rows cost no callback
    bookkeeping; the document listener installed by the callbacks reads NODE_ATTR."""
    attrs: dict[str, Any] = {NODE_ATTR: node_id}
    return html.Button([html.Span(name, className="name"), *(extra or [])], className="node-link", title=node_id,
                       **attrs)  # fmt: skip


def _link_row(view: GraphView, link: Link, labels: dict[str, str]) -> html.Button:
    node = view.node(link.node)
    name = display_name(node, labels) if node else link.node
    return node_link(link.node, name, [html.Span(f"{link.weight_normalized:+.1%}", className="w")])


def connections_panel(conns: Connections, view: GraphView, labels: dict[str, str]) -> list:
    groups = (("Inputs +", "in-pos", conns.inputs_pos), ("Inputs −", "in-neg", conns.inputs_neg),
              ("Outputs +", "out-pos", conns.outputs_pos), ("Outputs −", "out-neg", conns.outputs_neg))  # fmt: skip
    out: list = [html.H4("Connections")]
    for title, panel, links in groups:
        if links:
            out += [html.H5(title), html.Div([_link_row(view, lk, labels) for lk in links], className=panel)]
    return out if len(out) > 1 else [*out, html.P("No edges in this graph.", className="note")]


def search_results(ids: list[str], view: GraphView, labels: dict[str, str], query: str) -> list:
    if not query.strip():
        return []
    if not ids:
        return [html.H4("Search"), html.P(f"No node matches {query!r}.", className="note")]
    rows = [node_link(i, display_name(view.graph.nodes[view.row[i]], labels)) for i in ids]
    return [html.H4(f"Search: {len(ids)} match{'es' if len(ids) != 1 else ''}"), html.Div(rows)]
