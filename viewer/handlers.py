"""What the callbacks do, as plain functions of the URL query (and a few inputs): tests call them directly.

The URL query is the only per-user state. Data flows one way:
1. events (graph click, row click, buttons, Escape, slider) -> handle_<event> -> a new URL query;
2. URL query -> handle_view: every view part (page: picker / error card / header; panels; scores; subgraph; main
   figure) carries a key in the browser's RENDERED store, and a part is re-sent only when its key changed. The
   figures are sent in full only when graph, threshold or labels change; a click patches the overlay only.
3. files: save the view into the graph file, export ours / Neuronpedia JSON.
Controls mirroring the URL (threshold slider, edge type) are set and read in one function (`handle_controls`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dash import Patch, no_update
from dash.exceptions import PreventUpdate

from tracer.errors import ConfigError, TracerError
from tracer.layout import NodeKind
from viewer import layout, state
from viewer.data import GraphStore, Loaded
from viewer.features import FeatureStore, fits
from viewer.figures import Overlay, hover_edges, main_figure, overlay, overlay_figure, placement
from viewer.ids import Id
from viewer.labels import store_labels
from viewer.model import connections, search
from viewer.state import UrlState, effective_state, ignored_values, parse_query, to_query
from viewer.subgraph import pinned_options, subgraph_elements

SHOW, HIDE = {"display": "block"}, {"display": "none"}
READ_ONLY = "Save is off: this viewer is reachable from other machines (start it with --allow-write to save)"
EMPTY_FIGURE = {"data": [], "layout": {}}


@dataclass(frozen=True)
class Env:
    """What every handler needs: the served files and the optional feature store (no per-user state)."""

    store: GraphStore
    features: FeatureStore | None = None
    read_only: bool = False  # bound to a non-loopback address without --allow-write: Save is refused

    def features_for(self, loaded: Loaded) -> FeatureStore | None:
        """The feature store when it was built for this graph's transcoders (a folder may mix transcoders)."""
        return fits(self.features, loaded.view.graph.metadata)

    def open(self, search_: str | None) -> tuple[UrlState, Loaded]:
        """The effective state of a URL and its graph (re-pruned at the state's threshold). TracerError if the
        graph cannot be shown."""
        gid = parse_query(search_).graph or self.store.default_id()
        saved = self.store.load(gid)
        st = effective_state(search_, saved.view.graph.view)
        return st, (self.store.load(gid, st.threshold) if st.threshold is not None else saved)

    def update(self, search_: str | None, fn: Callable[[UrlState, Loaded], UrlState]) -> str:
        """The query after fn(state, loaded); PreventUpdate if unchanged or the graph cannot be loaded."""
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
    """A main-graph click ({"id", "pin"} from the clientside callback): select, or toggle the pin."""
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
                    link: str | None, all_edges: list[str] | None = None) -> tuple[Any, ...]:  # fmt: skip
    """(query, slider value, slider disabled, edge type, pinned-edges checklist): a control moved -> the URL; the
    URL -> the controls (no_update where a control already shows the right value). The slider is disabled when
    the graph has no usable sidecar (the scores panel says why)."""
    try:
        st, loaded = env.open(search_)
    except TracerError:
        return no_update, no_update, True, no_update, no_update
    rest = (no_update,) * 4
    if trigger == Id.THRESHOLD.value:
        new = state.set_threshold(st, threshold, loaded.file_threshold)
        return (no_update if new.threshold == st.threshold else to_query(new)), *rest
    if trigger == Id.LINK_TYPE.value and link:
        return to_query(state.set_link_type(st, link)), *rest
    if trigger == Id.PINNED_EDGES.value:
        return to_query(state.set_all_pinned_edges(st, bool(all_edges))), *rest
    value = st.threshold if st.threshold is not None else (loaded.file_threshold or 0.8)
    same = lambda new, old: no_update if new == old else new  # noqa: E731
    checks = [state.ALL_EDGES] if st.all_pinned_edges else []
    return (no_update, same(value, threshold), not loaded.has_sidecar, same(st.link_type.value, link),
            same(checks, all_edges))  # fmt: skip


# 2. URL -> views


def handle_page(env: Env, search_: str | None) -> tuple:
    """(picker, picker style, error card, graph page style, header)."""
    folder_mode = env.store.single is None
    if folder_mode and not parse_query(search_).graph:
        return layout.picker(env.store.entries(), env.store.root.name), SHOW, [], HIDE, []
    try:
        _, loaded = env.open(search_)
    except TracerError as e:
        back = [layout.picker(env.store.entries(), env.store.root.name)] if folder_mode else []
        return back, SHOW if back else HIDE, layout.error_card(env.store.public(str(e))), HIDE, []
    head = layout.header(loaded.view, loaded.graph_id, folder_mode, loaded.threshold)
    return [], HIDE, [], SHOW, head


def panels(env: Env, st: UrlState, loaded: Loaded) -> tuple:
    """(detail, connections, pin button text) for the clicked node."""
    v = loaded.view
    node = v.node(st.clicked) if st.clicked else None
    desc = None
    fs = env.features_for(loaded)
    if node is not None and node.kind is NodeKind.FEATURE and fs is not None:
        desc = fs.describe(node.layer, node.feature or 0)
    conns = layout.connections_panel(connections(v, node.id), v, st.labels) if node else []
    pin_text = "Unpin" if st.clicked and st.clicked in st.pinned else "Pin"
    return layout.detail_panel(node, v, st.labels, desc), conns, pin_text


def pinned_features(st: UrlState, loaded: Loaded) -> tuple[str, ...]:
    return tuple(p for p in st.pinned if (n := loaded.view.node(p)) is not None and n.kind is NodeKind.FEATURE)


def scores(env: Env, st: UrlState, loaded: Loaded) -> list:
    """Whole-graph scores (from the file) and the pinned subgraph's (from the sidecar)."""
    members = pinned_features(st, loaded)
    note = loaded.sidecar_note
    try:
        sub = env.store.subgraph_scores(loaded, members)
    except TracerError as e:
        sub, note = None, env.store.public(str(e))
    m = loaded.view.graph.metadata
    return layout.scores_panel(m.scores, m.pruned_scores, sub, len(members), note)


def subgraph(env: Env, st: UrlState, loaded: Loaded, checked: list[str] | None) -> tuple:
    """(cytoscape elements, pinned-list options, checked items still present, the subgraph's scores line)."""
    opts = pinned_options(loaded.view, st)
    values = {o["value"] for o in opts}
    members = pinned_features(st, loaded)
    try:
        sub = env.store.subgraph_scores(loaded, members)
    except TracerError:
        sub = None
    line = layout.subgraph_scores(sub, len(members), bool(st.pinned))
    return subgraph_elements(loaded.view, st), opts, [c for c in (checked or []) if c in values], line


def _overlay(env: Env, loaded: Loaded, st: UrlState, query: str | None) -> Overlay:
    hits = search(loaded.view, query or "", st.labels, store=env.features_for(loaded))
    return overlay(loaded.view, loaded.coords, st.clicked, list(st.pinned), hits, st.link_type, st.all_pinned_edges)


def overlay_patch(ov: Overlay) -> Patch:
    p = Patch()
    for trace, (x, y) in ov.traces().items():
        p["data"][trace]["x"] = x
        p["data"][trace]["y"] = y
    return p


def _keys(st: UrlState, loaded: Loaded) -> dict[str, Any]:
    """What each view part depends on (JSON-normalised, to compare with the browser's RENDERED store)."""
    stamp = f"{loaded.stamp[0]}:{loaded.stamp[1]}"  # a string: mtime_ns is beyond JavaScript's exact integers
    page = [loaded.graph_id, loaded.threshold, stamp]
    labels = sorted(st.labels.items())
    groups = [g.model_dump() for g in st.supernodes]
    keys = dict(page=page, panels=[page, st.clicked, labels, st.clicked in st.pinned],
                scores=[page, sorted(pinned_features(st, loaded))], subgraph=[page, st.pinned, groups, labels],
                figure=[page, labels],
                overlay=[st.clicked, st.pinned, st.link_type.value, st.all_pinned_edges])  # fmt: skip
    return json.loads(json.dumps(keys))


VIEW_PARTS = (("page", 5), ("panels", 3), ("scores", 1), ("subgraph", 4), ("figure", 2))


def handle_view(env: Env, search_: str | None, rendered: dict | None, query: str | None,
                checked: list[str] | None) -> tuple:  # fmt: skip
    """Every view output, in VIEW_PARTS order (the figure part: main, overlay), then the new RENDERED keys; parts
    whose key is unchanged are no_update, and an unchanged figure gets a Patch of its overlay (or nothing)."""
    old = rendered or {}
    if env.store.single is None and not parse_query(search_).graph:  # the folder's picker
        return (*handle_page(env, search_), *(no_update,) * 10, {})
    try:
        st, loaded = env.open(search_)
    except TracerError:  # the error card, and nothing left of the previous graph
        return (*handle_page(env, search_), [], [], "Pin", [], [], [], [], [], EMPTY_FIGURE, EMPTY_FIGURE, {})
    keys = _keys(st, loaded)
    fresh = {part: keys[part] != old.get(part) for part, _ in VIEW_PARTS}
    out: list = []
    build = dict(page=lambda: handle_page(env, search_), panels=lambda: panels(env, st, loaded),
                 scores=lambda: (scores(env, st, loaded),),
                 subgraph=lambda: subgraph(env, st, loaded, checked))  # fmt: skip
    for part, n in VIEW_PARTS[:-1]:
        out += build[part]() if fresh[part] else (no_update,) * n
    v, co = loaded.view, loaded.coords
    if fresh["figure"]:
        def main() -> dict:
            placed = placement(v, co, st.labels, store_labels(v, env.features_for(loaded)))
            return main_figure(v, co, st.labels, loaded.graph_id, placed)

        out += [env.store.figure(loaded, st.labels, main), overlay_figure(v, co, _overlay(env, loaded, st, query))]
    else:
        changed = keys["overlay"] != old.get("overlay")
        out += [no_update, overlay_patch(_overlay(env, loaded, st, query)) if changed else no_update]
    return (*out, keys)


def handle_search(env: Env, query: str | None, search_: str | None) -> tuple:
    """(search results, overlay Patch with the search rings)."""
    try:
        st, loaded = env.open(search_)
    except TracerError:
        raise PreventUpdate from None
    hits = search(loaded.view, query or "", st.labels, store=env.features_for(loaded))
    results = layout.search_results(hits, loaded.view, st.labels, query or "")
    return results, overlay_patch(_overlay(env, loaded, st, query))


def handle_hover(env: Env, node: str | None, search_: str | None) -> Patch:
    """An overlay Patch drawing the hovered node's edges (none when the pointer left every node)."""
    try:
        _, loaded = env.open(search_)
    except TracerError:
        raise PreventUpdate from None
    p = Patch()
    for trace, (x, y) in hover_edges(loaded.view, loaded.coords, node).items():
        p["data"][trace]["x"] = x
        p["data"][trace]["y"] = y
    return p


def handle_url_note(env: Env, search_: str | None) -> tuple[str, dict]:
    """(note text, note style): which values of the URL were ignored, shown until dismissed."""
    bad = ignored_values(search_)
    if not bad:
        return "", HIDE
    return f"Ignored in the URL (malformed or too long): {', '.join(bad)}", SHOW


# 3. files


def handle_figure(env: Env, which: str, kind: str | None, size: str | None, search_: str | None) -> dict:
    """dcc.Download data: the paper figure (viewer.paper) of the shown graph or pinned subgraph, SVG or PNG,
    `size` "WxH" inches. TracerError (ConfigError) for a bad size or an empty subgraph."""
    import base64

    from viewer.paper import FigureKind, render

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[x×]\s*(\d+(?:\.\d+)?)\s*", size or "")
    if not m:
        raise ConfigError(f"figure size {size!r}: expected WIDTHxHEIGHT in inches, e.g. 10x6")
    st, loaded = env.open(search_)
    fmt = "svg" if which == Id.FIGURE_SVG.value else "png"
    fig_kind = FigureKind.SUBGRAPH if kind == FigureKind.SUBGRAPH.value else FigureKind.GRAPH
    auto = store_labels(loaded.view, env.features_for(loaded))
    data = render(loaded.view, st, fig_kind, fmt, float(m[1]), float(m[2]), auto=auto)
    name = f"{Path(loaded.graph_id).stem}.{fig_kind.value}.{fmt}"
    if fmt == "svg":
        return {"content": data.decode(), "filename": name, "type": "image/svg+xml"}
    return {"content": base64.b64encode(data).decode(), "base64": True, "filename": name, "type": "image/png"}


def handle_save(env: Env, search_: str | None) -> str:
    if env.read_only:
        return READ_ONLY
    try:
        st, loaded = env.open(search_)
        path = env.store.save_view(loaded.graph_id, state.to_view(st))
    except (TracerError, OSError) as e:
        return f"Save failed: {e}"
    return f"Saved view into {path.name} at {time.strftime('%H:%M:%S')}"


def handle_export(env: Env, which: str, search_: str | None) -> dict:
    """dcc.Download data: the shown graph with the current view state, ours or Neuronpedia's format."""
    st, loaded = env.open(search_)
    graph = loaded.view.graph.model_copy(update={"view": state.to_view(st)})
    stem = Path(loaded.graph_id).stem
    if which == Id.EXPORT_NEURONPEDIA.value:
        from tracer.export import to_neuronpedia

        attribution = env.store.attribution(loaded.path)[0] if loaded.has_sidecar else None
        content = json.dumps(to_neuronpedia(graph, attribution, slug=stem))
        return {"content": content, "filename": f"{stem}.neuronpedia.json", "type": "application/json"}
    return {"content": graph.model_dump_json(), "filename": f"{stem}.json", "type": "application/json"}
