"""Callbacks: wiring only. Each one reads its inputs, calls a viewer.handlers function and returns its result.

1. events -> URL query: graph clicks and node rows (both become a CLICK_EVENT with the Ctrl/Cmd modifier, see
   viewer.clientside), subgraph taps, Escape, the Pin and subgraph buttons, and the controls (slider, edge type),
   whose callback is the URL's primary writer (it also mirrors the URL into the controls); the others duplicates.
2. URL query -> every view part, in one callback (handle_view), so a click costs one round trip and one render;
   a clientside callback keeps the overlay figure (edges, rings) on the main figure's axes through zoom and pan.
3. files: Save, JSON exports (dcc.Download), subgraph images (cytoscape generateImage).
"""

from __future__ import annotations

from dash import Dash, Input, Output, State, ctx, no_update
from dash.exceptions import PreventUpdate

from tracer.errors import TracerError
from viewer import intervene
from viewer.clientside import FIT_SUBGRAPH, GRAPH_CLICK, GRAPH_HOVER, INSTALL_LISTENERS, SYNC_AXES
from viewer.handlers import (
    Env,
    handle_click,
    handle_controls,
    handle_export,
    handle_figure,
    handle_hover,
    handle_pin,
    handle_save,
    handle_search,
    handle_select,
    handle_subgraph_action,
    handle_url_note,
    handle_view,
)  # fmt: skip
from viewer.ids import Id


def _out(i: Id, prop: str = "children", dup: bool = False) -> Output:
    return Output(i.value, prop, allow_duplicate=dup)


def _in(i: Id, prop: str = "n_clicks") -> Input:
    return Input(i.value, prop)


def _st(i: Id, prop: str = "value") -> State:
    return State(i.value, prop)


def _clicked() -> None:
    if not ctx.triggered or not ctx.triggered[0]["value"]:
        raise PreventUpdate  # a button appearing (n_clicks 0), not a click


VIEW_OUTPUTS = (
    (Id.PICKER, "children"), (Id.PICKER, "style"), (Id.ERROR_CARD, "children"), (Id.GRAPH_PAGE, "style"),
    (Id.HEADER, "children"), (Id.DETAIL, "children"), (Id.CONNECTIONS, "children"), (Id.PIN_BUTTON, "children"),
    (Id.SCORES, "children"), (Id.SUBGRAPH, "elements"), (Id.PINNED_LIST, "options"), (Id.PINNED_LIST, "value"),
    (Id.SUBGRAPH_SCORES, "children"),    (Id.MAIN_GRAPH, "figure"), (Id.OVERLAY_GRAPH, "figure"), (Id.RENDERED, "data"),
)  # fmt: skip  # the order of handle_view's result


def register_events(app: Dash, env: Env) -> None:
    """1. events -> URL query."""
    url, s_url = Input(Id.URL.value, "search"), State(Id.URL.value, "search")
    to_url = _out(Id.URL, "search", dup=True)
    app.clientside_callback(INSTALL_LISTENERS, _out(Id.LISTENERS, "data"), Input(Id.URL.value, "pathname"))
    app.clientside_callback(GRAPH_CLICK, _out(Id.CLICK_EVENT, "data"), _in(Id.MAIN_GRAPH, "clickData"))
    app.callback(_out(Id.URL, "search"), _out(Id.THRESHOLD, "value"), _out(Id.THRESHOLD, "disabled"),
                 _out(Id.LINK_TYPE, "value"), _out(Id.PINNED_EDGES, "value"), url, _in(Id.THRESHOLD, "value"),
                 _in(Id.LINK_TYPE, "value"), _in(Id.PINNED_EDGES, "value"))(
        lambda search_, t, lk, pe: handle_controls(env, ctx.triggered_id, search_, t, lk, pe))  # fmt: skip
    app.callback(to_url, _in(Id.CLICK_EVENT, "data"), s_url, prevent_initial_call=True)(
        lambda ev, search_: handle_click(env, ev, search_)
    )

    def on_tap(data, search_):
        if not data:
            raise PreventUpdate
        return handle_select(env, (data.get("members") or [data.get("id")])[0], search_)

    app.callback(to_url, _in(Id.SUBGRAPH, "tapNodeData"), s_url, prevent_initial_call=True)(on_tap)
    app.callback(to_url, _in(Id.KEY_EVENT, "data"), s_url, prevent_initial_call=True)(
        lambda _ev, search_: handle_select(env, None, search_)
    )
    app.callback(to_url, _in(Id.PIN_BUTTON), s_url, prevent_initial_call=True)(lambda _n, s_: handle_pin(env, s_))

    def on_action(*args):
        _clicked()
        *_, checked, label, search_ = args
        return handle_subgraph_action(env, str(ctx.triggered_id), checked, label, search_)

    buttons = (Id.GROUP_BUTTON, Id.UNGROUP_BUTTON, Id.UNPIN_BUTTON, Id.LABEL_BUTTON)
    app.callback(to_url, _out(Id.STATUS, dup=True), *(_in(b) for b in buttons), _st(Id.PINNED_LIST),
                 _st(Id.LABEL_INPUT), s_url, prevent_initial_call=True)(on_action)  # fmt: skip


def register_views(app: Dash, env: Env) -> None:
    """2. URL query -> views."""
    s_url = State(Id.URL.value, "search")
    app.callback(*(_out(i, p) for i, p in VIEW_OUTPUTS), Input(Id.URL.value, "search"), _st(Id.RENDERED, "data"),
                 _st(Id.SEARCH), _st(Id.PINNED_LIST))(
        lambda search_, rendered, q, checked: handle_view(env, search_, rendered, q, checked))  # fmt: skip
    app.callback(_out(Id.PINNED_LIST, "value", dup=True), _in(Id.SUBGRAPH, "selectedNodeData"),
                 prevent_initial_call=True)(lambda data: [d["id"] for d in data or []])  # fmt: skip
    app.clientside_callback(FIT_SUBGRAPH, _out(Id.SUBGRAPH_FIT, "data"), _in(Id.SUBGRAPH, "elements"))
    app.clientside_callback(GRAPH_HOVER, _out(Id.HOVER_EVENT, "data"), _in(Id.MAIN_GRAPH, "hoverData"))
    app.callback(_out(Id.OVERLAY_GRAPH, "figure", dup=True), _in(Id.HOVER_EVENT, "data"), s_url,
                 prevent_initial_call=True)(lambda node, search_: handle_hover(env, node, search_))  # fmt: skip

    def on_note(_path, _n, search_):
        if ctx.triggered_id == Id.URL_NOTE_CLOSE.value:
            return no_update, {"display": "none"}
        return handle_url_note(env, search_)

    # once per page load (a pasted or shared link), not at every click: the app writes only well-formed URLs
    app.callback(_out(Id.URL_NOTE_TEXT), _out(Id.URL_NOTE, "style"), Input(Id.URL.value, "pathname"),
                 _in(Id.URL_NOTE_CLOSE), s_url)(on_note)  # fmt: skip
    app.clientside_callback(
        SYNC_AXES, _out(Id.AXES_SYNC, "data"), _in(Id.MAIN_GRAPH, "figure"), _in(Id.OVERLAY_GRAPH, "figure")
    )
    app.callback(_out(Id.SEARCH_RESULTS), _out(Id.OVERLAY_GRAPH, "figure", dup=True), _in(Id.SEARCH, "value"), s_url,
                 prevent_initial_call=True)(lambda q, search_: handle_search(env, q, search_))  # fmt: skip


def register_files(app: Dash, env: Env) -> None:
    """3. Save and exports."""
    s_url = State(Id.URL.value, "search")
    app.callback(_out(Id.STATUS, dup=True), _in(Id.SAVE_BUTTON), s_url, prevent_initial_call=True)(
        lambda _n, search_: handle_save(env, search_)
    )

    def on_export(_a, _b, search_):
        _clicked()
        try:
            return handle_export(env, str(ctx.triggered_id), search_), no_update
        except TracerError as e:
            return no_update, f"Export failed: {e}"

    app.callback(_out(Id.DOWNLOAD, "data"), _out(Id.STATUS, dup=True), _in(Id.EXPORT_JSON),
                 _in(Id.EXPORT_NEURONPEDIA), s_url, prevent_initial_call=True)(on_export)  # fmt: skip

    def on_image(_a):
        _clicked()
        return {"type": "png", "action": "download", "filename": "subgraph"}

    # the panel as shown, PNG only: SVG is the paper figure's (cytoscape's SVG needs a 1.4 MB script bundle)
    app.callback(_out(Id.SUBGRAPH, "generateImage"), _in(Id.EXPORT_PNG), prevent_initial_call=True)(on_image)

    def on_figure(_a, _b, kind, size, search_):
        _clicked()
        try:
            return handle_figure(env, str(ctx.triggered_id), kind, size, search_), ""
        except TracerError as e:
            return no_update, f"Figure failed: {e}"

    app.callback(_out(Id.DOWNLOAD, "data", dup=True), _out(Id.STATUS, dup=True), _in(Id.FIGURE_SVG),
                 _in(Id.FIGURE_PNG), _st(Id.FIGURE_KIND), _st(Id.FIGURE_SIZE), s_url,
                 prevent_initial_call=True)(on_figure)  # fmt: skip


def register(app: Dash, env: Env) -> None:
    register_events(app, env)
    register_views(app, env)
    register_files(app, env)
    intervene.register(app, env)
