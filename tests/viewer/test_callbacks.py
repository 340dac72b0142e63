"""Callback logic as plain functions: URL in, components / queries / figures out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dash import Patch, no_update
from dash.exceptions import PreventUpdate

from tracer.cli import build_parser, main
from tracer.graphfile import load_graph
from tracer.layout import NodeKind
from tracer.schema import GraphFile
from viewer import DEFAULT_HOST, DEFAULT_PORT
from viewer.app import create_app
from viewer.callbacks import VIEW_OUTPUTS
from viewer.data import GraphStore
from viewer.features import Example, FeatureDescription
from viewer.handlers import (
    Env,
    handle_click,
    handle_controls,
    handle_export,
    handle_page,
    handle_save,
    handle_search,
    handle_subgraph_action,
    handle_url_note,
    handle_view,
)  # fmt: skip
from viewer.ids import NODE_ATTR, Id
from viewer.model import connections
from viewer.state import parse_query

XSS = "<img src=x onerror=alert(1)>"
G = "?graph=small.json"


def texts(component) -> list[str]:
    """Every string in a component tree (what the browser shows as text)."""
    if isinstance(component, str):
        return [component]
    if isinstance(component, list | tuple):
        return [t for c in component for t in texts(c)]
    children = getattr(component, "children", None)
    return texts(children) if children is not None else []


def node_rows(component, group: str = "") -> list[tuple[str, str]]:
    """(enclosing className, node id) of every element that links to a node (NODE_ATTR)."""
    if isinstance(component, list | tuple):
        return [r for c in component for r in node_rows(c, group)]
    if not hasattr(component, "to_plotly_json"):
        return []
    props = component.to_plotly_json()["props"]
    own = [(group, props[NODE_ATTR])] if NODE_ATTR in props else []
    return own + node_rows(props.get("children"), props.get("className") or group)


def view(env: Env, search: str, rendered: dict | None = None) -> dict:
    """handle_view's outputs by (component id, property)."""
    out = handle_view(env, search, rendered, "", [])
    assert len(out) == len(VIEW_OUTPUTS)
    return {(i.value, prop): v for (i, prop), v in zip(VIEW_OUTPUTS, out, strict=True)}


def handle_panels(env: Env, search: str) -> tuple:
    v = view(env, search)
    return v["detail", "children"], v["connections", "children"], v["pin-button", "children"], v["scores", "children"]


def handle_subgraph(env: Env, search: str, checked: list[str]) -> tuple:
    out = handle_view(env, search, None, "", checked)
    v = {(i.value, prop): x for (i, prop), x in zip(VIEW_OUTPUTS, out, strict=True)}
    return v["subgraph", "elements"], v["pinned-list", "options"], v["pinned-list", "value"]


def node_of(graph: GraphFile, kind: NodeKind) -> str:
    return next(n.id for n in graph.nodes if n.kind is kind)


def test_page_picker_and_error_card(env: Env, graph_dir: Path):
    picker, picker_style, error, page_style, _ = handle_page(env, "")
    assert picker_style["display"] == "block" and page_style["display"] == "none" and error == []
    assert "small.json" in texts(picker) and "The capital of France is" in texts(picker)
    (graph_dir / "broken.json").write_text('{"schema_version": 2, "nodes": []}')
    for bad, msg in (("?graph=broken.json", "not a valid graph file"), ("?graph=../x.json", "invalid graph id")):
        _, _, error, page_style, _ = handle_page(env, bad)
        assert page_style["display"] == "none" and any(msg in t for t in texts(error))
    (graph_dir / "corrupt.json").write_text("{oops")
    _, _, error, _, _ = handle_page(env, "?graph=corrupt.json")
    assert texts(error)[1].startswith("corrupt.json is not valid JSON") and str(graph_dir) not in str(texts(error))
    *_, page_style, head = handle_page(env, G)
    assert page_style["display"] == "block" and "The capital of France is" in texts(head)


def test_click_then_panels(env: Env, graph: GraphFile):
    f = next(n for n in graph.nodes if n.kind is NodeKind.FEATURE and any(e.target == n.id for e in graph.edges))
    q = handle_click(env, {"id": f.id, "pin": False}, G)
    assert parse_query(q).clicked == f.id and parse_query(q).pinned == ()
    detail, conns, pin_text, _ = handle_panels(env, q)
    assert pin_text == "Pin" and f"{f.activation:.4g}" in texts(detail)
    rows = set(node_rows(conns))
    c = connections(env.store.load("small.json").view, f.id)
    want = {
        (p, lk.node) for p, links in zip(("in-pos", "in-neg", "out-pos", "out-neg"), c, strict=True) for lk in links
    }
    assert rows == want and rows
    q2 = handle_click(env, {"id": f.id, "pin": True}, q)
    assert parse_query(q2).pinned == (f.id,) and handle_panels(env, q2)[2] == "Unpin"
    with pytest.raises(PreventUpdate):
        handle_click(env, {"nothing": 1}, q)


@pytest.mark.parametrize("kind, expect", [(NodeKind.LOGIT, "probability"), (NodeKind.ERROR, "share of graph influence"),
                                          (NodeKind.EMBEDDING, "token id")])  # fmt: skip
def test_detail_per_kind(env: Env, graph: GraphFile, kind: NodeKind, expect: str):
    nid = node_of(graph, kind)
    node = next(n for n in graph.nodes if n.id == nid)
    detail = texts(handle_panels(env, f"{G}&clickedId={nid}")[0])
    assert expect in detail
    if kind is NodeKind.LOGIT:
        assert f"{node.probability:.4f}" in detail and repr(node.token) in detail
    if kind is NodeKind.ERROR:
        share = node.influence / sum(n.influence for n in graph.nodes if n.kind is not NodeKind.LOGIT)
        assert f"{share:.2%}" in detail and f"{node.activation:.4g}" in detail


def test_sessions_are_independent(env: Env, graph: GraphFile):
    a, b = node_of(graph, NodeKind.FEATURE), node_of(graph, NodeKind.LOGIT)
    before = handle_subgraph(env, G, [])
    qa = handle_click(env, {"id": a, "pin": True}, G)
    qb = handle_click(env, {"id": b, "pin": True}, G)
    assert [e["data"]["id"] for e in handle_subgraph(env, qa, [])[0]] == [a]
    assert [e["data"]["id"] for e in handle_subgraph(env, qb, [])[0]] == [b]
    assert handle_subgraph(env, G, []) == before == ([], [], [])


def test_group_label_and_subgraph(env: Env, graph: GraphFile):
    a, b = [n.id for n in graph.nodes if n.kind is NodeKind.FEATURE][:2]
    q = f"{G}&pinnedIds={a},{b}"
    assert handle_subgraph_action(env, Id.GROUP_BUTTON.value, [a], "", q)[0] is no_update
    q, msg = handle_subgraph_action(env, Id.GROUP_BUTTON.value, [a, b], XSS, q)
    elements, options, _ = handle_subgraph(env, q, [])
    group = [e for e in elements if e["data"].get("kind") == "supernode"]
    assert msg == "" and len(group) == 1 and group[0]["data"]["label"] == XSS
    assert group[0]["data"]["members"] == [a, b] and options[0]["value"] == "group:0"
    children = {e["data"]["id"]: e for e in elements if e["data"].get("parent") == "group:0"}
    assert set(children) == {a, b}  # the members are drawn inside the supernode's box
    assert elements.index(group[0]) < min(elements.index(c) for c in children.values())
    line = texts(view(env, q)["subgraph-scores", "children"])
    assert any("replacement" in t for t in line) and "Subgraph of 2 features: " in line
    q, _ = handle_subgraph_action(env, Id.UNGROUP_BUTTON.value, ["group:0"], "", q)
    assert {e["data"]["id"] for e in handle_subgraph(env, q, [])[0] if "source" not in e["data"]} == {a, b}
    q, _ = handle_subgraph_action(env, Id.LABEL_BUTTON.value, [a], "renamed", q)
    assert parse_query(q).labels == {a: "renamed"}


def test_view_sends_only_changed_parts(env: Env, graph: GraphFile):
    first = view(env, G)
    fig, rendered = first["main-graph", "figure"], first["rendered", "data"]
    assert isinstance(fig, dict) and first["graph-page", "style"]["display"] == "block"
    rendered = json.loads(json.dumps(rendered))  # as it comes back from the browser
    assert all(v is no_update for v in view(env, G, rendered).values() if v != rendered)
    nid = node_of(graph, NodeKind.FEATURE)
    click = view(env, f"{G}&clickedId={nid}", rendered)
    assert click["main-graph", "figure"] is no_update and isinstance(click["overlay-graph", "figure"], Patch)
    assert click["header", "children"] is no_update
    assert click["subgraph", "elements"] is no_update and click["scores", "children"] is no_update
    assert click["detail", "children"] is not no_update
    pinned = view(env, f"{G}&clickedId={nid}&pinnedIds={nid}", rendered)
    assert pinned["subgraph", "elements"] is not no_update and pinned["scores", "children"] is not no_update
    relabeled = view(env, f'{G}&clerps=[["{nid}","x"]]', rendered)
    assert isinstance(relabeled["main-graph", "figure"], dict) and isinstance(
        relabeled["overlay-graph", "figure"], dict
    )
    repruned = view(env, f"{G}&pruningThreshold=0.5", rendered)
    assert isinstance(repruned["main-graph", "figure"], dict) and repruned["header", "children"] is not no_update
    results, search_patch = handle_search(env, "France", G)
    assert isinstance(search_patch, Patch) and any("France" in t for t in texts(results))
    broken = view(env, "?graph=nope.json", rendered)
    assert broken["rendered", "data"] == {} and any("not found" in t for t in texts(broken["error-card", "children"]))


def test_controls(env: Env):
    q, value, disabled, link, all_edges = handle_controls(env, None, G, None, None)
    assert (q, value, disabled, link, all_edges) == (no_update, 0.95, False, "both", [])  # pruned at 0.95
    assert handle_controls(env, None, G, 0.95, "both", []) == (no_update, no_update, False, no_update, no_update)
    q, *_ = handle_controls(env, Id.THRESHOLD.value, G, 0.6, "both")
    assert parse_query(q).threshold == 0.6
    assert handle_controls(env, None, q, 0.95, "both")[1] == 0.6
    assert handle_controls(env, Id.THRESHOLD.value, G, 0.95, "both")[0] is no_update
    assert parse_query(handle_controls(env, Id.LINK_TYPE.value, G, 0.95, "input")[0]).link_type.value == "input"
    q = handle_controls(env, Id.PINNED_EDGES.value, G, 0.95, "both", ["all"])[0]
    assert parse_query(q).all_pinned_edges and handle_controls(env, None, q, 0.95, "both", [])[4] == ["all"]


def test_save_and_exports(env: Env, graph_dir: Path, graph: GraphFile):
    nid = node_of(graph, NodeKind.FEATURE)
    q = f'{G}&clickedId={nid}&pinnedIds={nid}&clerps=[["{nid}","mine"]]'
    assert handle_save(env, q).startswith("Saved view into small.json")
    view = load_graph(graph_dir / "small.json").view
    assert (view.clicked, view.pinned, view.labels) == (nid, [nid], {nid: "mine"})
    assert [e["data"]["id"] for e in handle_subgraph(env, G, [])[0]] == [nid]  # a bare URL shows the saved view
    assert parse_query(handle_click(env, {"id": nid, "pin": False}, G)).pinned == (nid,)
    ours = handle_export(env, Id.EXPORT_JSON.value, q)
    assert (
        ours["filename"] == "small.json" and GraphFile.model_validate_json(ours["content"]).view.labels[nid] == "mine"
    )
    npd = json.loads(handle_export(env, Id.EXPORT_NEURONPEDIA.value, q)["content"])
    assert len(npd["nodes"]) == len(graph.nodes) and len(npd["links"]) == len(graph.edges)
    assert any(n["clerp"] == "mine" for n in npd["nodes"])


def test_cli_and_app(graph_dir: Path, capsys):
    args = build_parser().parse_args(["view"])
    assert (args.host, args.port, args.path) == (DEFAULT_HOST, DEFAULT_PORT, Path("."))
    assert DEFAULT_HOST == "127.0.0.1"
    assert main(["view", str(graph_dir / "nope.json")]) == 2
    assert "no such graph file or folder" in capsys.readouterr().err
    app = create_app(graph_dir)
    assert app.config.serve_locally and app.config.assets_folder.endswith("viewer/assets")
    assert Path(app.config.assets_folder, "viewer.css").is_file()
    assert GraphStore(graph_dir).single is None


class FakeStore:
    """A feature store as a later issue will provide one (viewer.features.FeatureStore)."""

    def __init__(self):
        self.asked: list[tuple[int, int]] = []

    def describe(self, layer: int, feature: int) -> FeatureDescription | None:
        self.asked.append((layer, feature))
        return FeatureDescription(top_tokens=[(" Paris", 2.5)], bottom_tokens=[(" Rome", -1.0)],
                                  examples=[Example(["The", " city", XSS], [0.0, 1.0, 3.0])],
                                  histogram=([0.0, 1.0, 2.0], [5, 1]), frequency=0.0123)  # fmt: skip

    def labels(self, keys) -> dict[tuple[int, int], str]:
        return {}

    def search(self, text: str, limit: int = 30) -> list:
        return []


def test_feature_store_plugs_in(graph_dir: Path, graph: GraphFile):
    store = FakeStore()
    env = Env(GraphStore(graph_dir), store)
    f = next(n for n in graph.nodes if n.kind is NodeKind.FEATURE)
    detail = handle_panels(env, f"{G}&clickedId={f.id}")[0]
    shown = texts(detail)
    assert store.asked == [(f.layer, f.feature)]
    assert {" Paris", " Rome", XSS, " city", "fires on 1.230% of tokens"} <= set(shown)
    logit_edges = [e for e in graph.edges if e.source == f.id and e.target.startswith("LOGIT")]
    assert len([t for t in shown if t.startswith(" tok")]) == len(logit_edges)
    assert handle_panels(env, f"{G}&clickedId={node_of(graph, NodeKind.LOGIT)}") and store.asked == [
        (f.layer, f.feature)
    ]


def test_corrupt_sidecar_disables_the_slider_with_a_note(env: Env, graph_dir: Path):
    (graph_dir / "small.adjacency.safetensors").write_bytes(b"not safetensors")
    q = f"{G}&pruningThreshold=0.5"
    assert handle_controls(env, None, q, None, None)[2] is True  # slider disabled
    v = view(env, q)
    assert isinstance(v["main-graph", "figure"], dict) and v["graph-page", "style"]["display"] == "block"
    note = [t for t in texts(v["scores", "children"]) if "sidecar" in t]
    assert note and "re-pruning" in note[0] and str(graph_dir) not in note[0]


def test_url_note_names_ignored_values(env: Env):
    text, style = handle_url_note(env, f"{G}&pruningThreshold=abc&clerps=[1]")
    assert style["display"] == "block" and "pruningThreshold=abc" in text and "clerps=[1]" in text
    assert handle_url_note(env, G)[1]["display"] == "none"
