"""Callbacks: thin wiring between components and plain `handle_*` functions (which tests call directly).

The URL query is the only per-user state. Data flows one way:
1. events (graph click, row click, buttons, Escape, slider) -> a handle_* function -> a new URL query
   (`Output(URL.search)`; Dash pushes it to the address bar without reloading);
2. URL query -> renderers: page (picker / error card / header), panels, subgraph, and the main figure, which is
   redrawn in full only when the graph, threshold or labels change and otherwise patched (overlay traces only).
Controls that mirror the URL (threshold slider, edge type) are set and read in one callback (`handle_controls`),
the one circular pattern Dash allows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dash import ALL, Dash, Input, Output, Patch, State, ctx, no_update
from dash.exceptions import PreventUpdate

from tracer.errors import GraphFileError, TracerError
from tracer.layout import NodeKind
from viewer import layout, state
from viewer.data import GraphStore, Loaded
from viewer.features import FeatureStore
from viewer.figures import Overlay, main_figure, overlay
from viewer.ids import Id, LinkType
from viewer.model import connections, search
from viewer.state import UrlState, effective_state, parse_query, to_query
from viewer.subgraph import pinned_options, subgraph_elements

SHOW, HIDE = {"display": "block"}, {"display": "none"}


def _out(i: Id, prop: str = "children", dup: bool = False) -> Output:
    return Output(i.value, prop, allow_duplicate=dup)


def _in(i: Id, prop: str = "n_clicks") -> Input:
    return Input(i.value, prop)


def _st(i: Id, prop: str = "value") -> State:
    return State(i.value, prop)


@dataclass(frozen=True)
class Env:
    """What every handler needs: the served files and the optional feature store (no per-user state)."""

    store: GraphStore
    features: FeatureStore | None = None

    def open(self, search_: str | None) -> tuple[UrlState, Loaded]:
        """The effective state of a URL and its graph (re-pruned at the state's threshold). GraphFileError if the
        graph cannot be shown."""
        gid = parse_query(search_).graph or self.store.default_id()
        saved = self.store.load(gid)
        st = effective_state(search_, saved.view.graph.view)
        return st, (self.store.load(gid, st.threshold) if st.threshold is not None else saved)

    def update(self, search_: str | None, fn) -> str:
        """Apply fn(state, loaded) -> UrlState and return the new query (no update if unchanged or unloadable)."""
        try:
            st, loaded = self.open(search_)
        except TracerError:
            raise PreventUpdate from None
        new = fn(st, loaded)
        if new == st and st.explicit:
            raise PreventUpdate
        return to_query(new)


# 1. events -> URL


def handle_click(env: Env, event: dict | None, search_: str | None) -> str:
    if not event or not isinstance(event.get("id"), str):
        raise PreventUpdate
    return env.update(search_, lambda s, _: state.click(s, event["id"], bool(event.get("pin"))))


def handle_select(env: Env, node: str | None, search_: str | None) -> str:
    return env.update(search_, lambda s, _: state.select(s, node))


def handle_pin(env: Env, search_: str | None) -> str:
    return env.update(search_, lambda s, _: state.toggle_pin(s, s.clicked) if s.clicked else s)


def handle_subgraph_action(env: Env, action: str, checked: list[str] | None, label: str | None,
                           search_: str | None) -> tuple[Any, str]:  # fmt: skip
    """Group / ungroup / unpin / set label on the checked pinned-list items -> (new query, status message)."""
    checked, label = list(checked or []), label or ""
    if action == Id.GROUP_BUTTON.value:
        st, _ = env.open(search_)
        if len({m for c in checked for m in state.item_members(st, c)}) < 2:
            return no_update, "Check at least two pinned nodes to group them."
        return env.update(search_, lambda s, _: state.group(s, checked, label)), ""
    fn = {Id.UNGROUP_BUTTON.value: lambda s, _: state.ungroup(s, checked),
          Id.UNPIN_BUTTON.value: lambda s, _: state.unpin(s, checked),
          Id.LABEL_BUTTON.value: lambda s, _: state.set_label(s, checked, label)}[action]  # fmt: skip
    return env.update(search_, fn), ""


def handle_controls(env: Env, trigger: str | None, search_: str | None, threshold: float | None,
                    link: str | None) -> tuple[Any, Any, Any, Any]:  # fmt: skip
    """(query, slider value, slider disabled, edge type): a control moved -> the URL; the URL -> the controls."""
    try:
        st, loaded = env.open(search_)
    except TracerError:
        return no_update, no_update, True, no_update
    if trigger == Id.THRESHOLD.value:
        new = state.set_threshold(st, threshold, loaded.file_threshold)
        return (no_update if new.threshold == st.threshold else to_query(new)), no_update, no_update, no_update
    if trigger == Id.LINK_TYPE.value and link:
        return to_query(state.set_link_type(st, link)), no_update, no_update, no_update
    value = st.threshold if st.threshold is not None else (loaded.file_threshold or 0.8)
    return no_update, value, not loaded.has_sidecar, st.link_type.value


# 2. URL -> views


def handle_page(env: Env, search_: str | None) -> tuple:
    """(picker, picker style, error card, graph page style, header)."""
    folder_mode = env.store.single is None
    if folder_mode and not parse_query(search_).graph:
        return layout.picker(env.store.entries(), env.store.root.name), SHOW, [], HIDE, []
    try:
        st, loaded = env.open(search_)
    except TracerError as e:
        back = [layout.picker(env.store.entries(), env.store.root.name)] if folder_mode else []
        return back, SHOW if back else HIDE, layout.error_card(str(e)), HIDE, []
    head = layout.header(loaded.view, loaded.graph_id, folder_mode, loaded.threshold)
    return [], HIDE, [], SHOW, head


def handle_panels(env: Env, search_: str | None) -> tuple:
    """(detail, connections, pin button text, scores)."""
    try:
        st, loaded = env.open(search_)
    except TracerError:
        return [], [], "Pin", []
    v = loaded.view
    node = v.node(st.clicked) if st.clicked else None
    desc = None
    if node is not None and node.kind is NodeKind.FEATURE and env.features is not None:
        desc = env.features.describe(node.layer, node.feature or 0)
    conns = layout.connections_panel(connections(v, node.id), v, st.labels) if node else []
    members = tuple(p for p in st.pinned if (n := v.node(p)) is not None and n.kind is NodeKind.FEATURE)
    note = "" if loaded.has_sidecar else "no adjacency sidecar: subgraph scores and re-pruning unavailable"
    try:
        sub = env.store.subgraph_scores(loaded, members)
    except TracerError as e:
        sub, note = None, str(e)
    m = v.graph.metadata
    scores = layout.scores_panel(m.scores, m.pruned_scores, sub, len(members), note)
    pin_text = "Unpin" if st.clicked and st.clicked in st.pinned else "Pin"
    return layout.detail_panel(node, v, st.labels, desc), conns, pin_text, scores


def handle_subgraph(env: Env, search_: str | None, checked: list[str] | None) -> tuple:
    """(cytoscape elements, pinned-list options, checked items still present)."""
    try:
        st, loaded = env.open(search_)
    except TracerError:
        return [], [], []
    opts = pinned_options(loaded.view, st)
    values = {o["value"] for o in opts}
    return subgraph_elements(loaded.view, st), opts, [c for c in (checked or []) if c in values]


def _overlay(loaded: Loaded, st: UrlState, query: str | None) -> Overlay:
    hits = search(loaded.view, query or "", st.labels)
    return overlay(loaded.view, loaded.coords, st.clicked, list(st.pinned), hits, st.link_type)


def overlay_patch(ov: Overlay) -> Patch:
    p = Patch()
    for trace, (x, y) in ov.traces().items():
        p["data"][trace]["x"] = x
        p["data"][trace]["y"] = y
    return p


def handle_figure(env: Env, search_: str | None, rendered: dict | None, query: str | None) -> tuple:
    """(figure or Patch, rendered key): a full figure only when graph, threshold or labels changed."""
    try:
        st, loaded = env.open(search_)
    except TracerError:
        return {"data": [], "layout": {}}, None
    key = [loaded.graph_id, loaded.threshold, sorted(st.labels.items())]
    ov = _overlay(loaded, st, query)
    if rendered and rendered.get("key") == json.loads(json.dumps(key)):
        return overlay_patch(ov), no_update
    return main_figure(loaded.view, loaded.coords, st.labels, ov, loaded.graph_id), {"key": key}


def handle_search(env: Env, query: str | None, search_: str | None) -> tuple:
    """(search results, figure Patch with the search rings)."""
    try:
        st, loaded = env.open(search_)
    except TracerError:
        raise PreventUpdate from None
    hits = search(loaded.view, query or "", st.labels)
    return layout.search_results(hits, loaded.view, st.labels, query or ""), overlay_patch(_overlay(loaded, st, query))


# 3. files


def handle_save(env: Env, search_: str | None) -> str:
    try:
        st, loaded = env.open(search_)
        path = env.store.save_view(loaded.graph_id, state.to_view(st))
    except (TracerError, OSError) as e:
        return f"Save failed: {e}"
    return f"Saved view into {path.name} at {time.strftime('%H:%M:%S')}"


def handle_export(env: Env, which: str, search_: str | None) -> dict:
    st, loaded = env.open(search_)
    graph = loaded.view.graph.model_copy(update={"view": state.to_view(st)})
    stem = Path(loaded.graph_id).stem
    if which == Id.EXPORT_NEURONPEDIA.value:
        from tracer.export import to_neuronpedia

        attribution = env.store.attribution(loaded.path)[0] if loaded.has_sidecar else None
        content = json.dumps(to_neuronpedia(graph, attribution, slug=stem))
        return {"content": content, "filename": f"{stem}.neuronpedia.json", "type": "application/json"}
    return {"content": graph.model_dump_json(), "filename": f"{stem}.json", "type": "application/json"}


INSTALL_LISTENERS = """
function(_) {
    if (!window.__tracerListeners) {
        window.__tracerListeners = true;
        window.__tracerPin = false;
        document.addEventListener('mousedown', e => { window.__tracerPin = e.ctrlKey || e.metaKey; }, true);
        document.addEventListener('keydown', e => {
            if (e.key === 'Escape') {
                dash_clientside.set_props('%s', {data: {key: 'Escape', t: Date.now()}});
            }
        });
    }
    return dash_clientside.no_update;
}""" % Id.KEY_EVENT.value  # noqa: UP031 (JS braces)

GRAPH_CLICK = """
function(cd) {
    const p = cd && cd.points && cd.points[0];
    if (!p || typeof p.customdata !== 'string') { return dash_clientside.no_update; }
    return {id: p.customdata, pin: !!window.__tracerPin, t: Date.now()};
}"""


def _triggered_click() -> None:
    if not ctx.triggered or not ctx.triggered[0]["value"]:
        raise PreventUpdate  # a row appearing (n_clicks 0), not a click


def register(app: Dash, env: Env) -> None:
    url, s_url = Input(Id.URL.value, "search"), State(Id.URL.value, "search")
    to_url = _out(Id.URL, "search", dup=True)
    app.clientside_callback(INSTALL_LISTENERS, _out(Id.LISTENERS, "data"), Input(Id.URL.value, "pathname"))
    app.clientside_callback(GRAPH_CLICK, _out(Id.CLICK_EVENT, "data"), _in(Id.MAIN_GRAPH, "clickData"))

    # 1. events -> URL (the controls callback is the URL's primary writer, the others duplicates)
    app.callback(_out(Id.URL, "search"), _out(Id.THRESHOLD, "value"), _out(Id.THRESHOLD, "disabled"),
                 _out(Id.LINK_TYPE, "value"), url, _in(Id.THRESHOLD, "value"), _in(Id.LINK_TYPE, "value"))(
        lambda search_, t, lk: handle_controls(env, ctx.triggered_id, search_, t, lk))  # fmt: skip
    app.callback(to_url, _in(Id.CLICK_EVENT, "data"), s_url, prevent_initial_call=True)(
        lambda ev, search_: handle_click(env, ev, search_))

    def on_row(_clicks, search_):
        _triggered_click()
        return handle_select(env, ctx.triggered_id["node"], search_)

    app.callback(to_url, Input({"type": Id.NODE_LINK.value, "panel": ALL, "node": ALL}, "n_clicks"), s_url,
                 prevent_initial_call=True)(on_row)  # fmt: skip

    def on_tap(data, search_):
        if not data:
            raise PreventUpdate
        return handle_select(env, (data.get("members") or [data.get("id")])[0], search_)

    app.callback(to_url, _in(Id.SUBGRAPH, "tapNodeData"), s_url, prevent_initial_call=True)(on_tap)
    app.callback(to_url, _in(Id.KEY_EVENT, "data"), s_url, prevent_initial_call=True)(
        lambda _ev, search_: handle_select(env, None, search_))
    app.callback(to_url, _in(Id.PIN_BUTTON), s_url, prevent_initial_call=True)(lambda _n, s_: handle_pin(env, s_))

    def on_action(*args):
        _triggered_click()
        *_, checked, label, search_ = args
        return handle_subgraph_action(env, str(ctx.triggered_id), checked, label, search_)

    buttons = (Id.GROUP_BUTTON, Id.UNGROUP_BUTTON, Id.UNPIN_BUTTON, Id.LABEL_BUTTON)
    app.callback(to_url, _out(Id.STATUS, dup=True), *(_in(b) for b in buttons), _st(Id.PINNED_LIST),
                 _st(Id.LABEL_INPUT), s_url, prevent_initial_call=True)(on_action)  # fmt: skip

    # 2. URL -> views
    app.callback(_out(Id.PICKER), _out(Id.PICKER, "style"), _out(Id.ERROR_CARD), _out(Id.GRAPH_PAGE, "style"),
                 _out(Id.HEADER), url)(lambda search_: handle_page(env, search_))  # fmt: skip
    app.callback(_out(Id.DETAIL), _out(Id.CONNECTIONS), _out(Id.PIN_BUTTON), _out(Id.SCORES), url)(
        lambda search_: handle_panels(env, search_))
    app.callback(_out(Id.SUBGRAPH, "elements"), _out(Id.PINNED_LIST, "options"), _out(Id.PINNED_LIST, "value"), url,
                 _st(Id.PINNED_LIST))(lambda search_, checked: handle_subgraph(env, search_, checked))  # fmt: skip
    app.callback(_out(Id.PINNED_LIST, "value", dup=True), _in(Id.SUBGRAPH, "selectedNodeData"),
                 prevent_initial_call=True)(lambda data: [d["id"] for d in data or []])  # fmt: skip
    app.callback(_out(Id.MAIN_GRAPH, "figure"), _out(Id.RENDERED, "data"), url, _st(Id.RENDERED, "data"),
                 _st(Id.SEARCH))(lambda search_, rendered, q: handle_figure(env, search_, rendered, q))  # fmt: skip
    app.callback(_out(Id.SEARCH_RESULTS), _out(Id.MAIN_GRAPH, "figure", dup=True), _in(Id.SEARCH, "value"), s_url,
                 prevent_initial_call=True)(lambda q, search_: handle_search(env, q, search_))  # fmt: skip

    # 3. files
    app.callback(_out(Id.STATUS, dup=True), _in(Id.SAVE_BUTTON), s_url, prevent_initial_call=True)(
        lambda _n, search_: handle_save(env, search_))

    def on_export(_a, _b, search_):
        _triggered_click()
        try:
            return handle_export(env, str(ctx.triggered_id), search_), no_update
        except TracerError as e:
            return no_update, f"Export failed: {e}"

    app.callback(_out(Id.DOWNLOAD, "data"), _out(Id.STATUS, dup=True), _in(Id.EXPORT_JSON),
                 _in(Id.EXPORT_NEURONPEDIA), s_url, prevent_initial_call=True)(on_export)  # fmt: skip

    def on_image(_a, _b):
        _triggered_click()
        kind = "svg" if ctx.triggered_id == Id.EXPORT_SVG.value else "png"
        return {"type": kind, "action": "download", "filename": "subgraph"}

    app.callback(_out(Id.SUBGRAPH, "generateImage"), _in(Id.EXPORT_SVG), _in(Id.EXPORT_PNG),
                 prevent_initial_call=True)(on_image)  # fmt: skip
