"""GraphView queries and the main figure, checked against brute force over the graph file's own lists."""

from __future__ import annotations

import numpy as np
import pytest

from tracer.layout import NodeKind
from tracer.schema import GraphFile, Supernode
from viewer.figures import (
    CELL_BAND,
    GLYPH,
    N_BINS,
    NODE_TRACE,
    NodeTrace,
    OverlayTrace,
    coordinates,
    edge_bin,
    edge_style,
    hover_edges,
    main_figure,
    overlay,
    overlay_figure,
)  # fmt: skip
from viewer.ids import LinkType
from viewer.model import GraphView, connections, display_name, search
from viewer.synthetic import synthetic_attribution, synthetic_graph

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def view(graph: GraphFile) -> GraphView:
    return GraphView.build(graph)


def feature_with_edges(view: GraphView) -> str:
    return next(n.id for i, n in enumerate(view.graph.nodes)
                if n.kind is NodeKind.FEATURE and len(view.incoming(i)) and len(view.outgoing(i)))  # fmt: skip


def test_connections_match_brute_force(view: GraphView):
    for node in view.graph.nodes:
        c = connections(view, node.id)
        ins = [(e.source, e.weight) for e in view.graph.edges if e.target == node.id]
        outs = [(e.target, e.weight) for e in view.graph.edges if e.source == node.id]
        assert sorted((lk.node, lk.weight) for lk in c.inputs_pos + c.inputs_neg) == sorted(ins)
        assert sorted((lk.node, lk.weight) for lk in c.outputs_pos + c.outputs_neg) == sorted(outs)
        assert all(lk.weight > 0 for lk in c.inputs_pos + c.outputs_pos)
        assert all(lk.weight < 0 for lk in c.inputs_neg + c.outputs_neg)
        for group in c:
            mags = [abs(lk.weight_normalized) for lk in group]
            assert mags == sorted(mags, reverse=True)


def test_search(view: GraphView):
    f = next(n for n in view.graph.nodes if n.kind is NodeKind.FEATURE)
    assert f.id in search(view, f" {f.layer} / {f.feature} ")
    assert all(view.graph.nodes[view.row[i]].feature == f.feature for i in search(view, f"{f.layer}/{f.feature}"))
    france = view.graph.metadata.tokens.index(" France")
    at = {n.id for n in view.graph.nodes if n.pos == france and n.kind in (NodeKind.EMBEDDING, NodeKind.FEATURE)}
    assert set(search(view, "FRANCE")) == at | {n.id for n in view.graph.nodes if "france" in (n.token or "").lower()}
    assert search(view, "my label") == [] and search(view, "  ") == []
    assert search(view, "MY LABEL", {f.id: "My label here"}) == [f.id]
    assert search(view, f.id) == [f.id]  # a full node id finds that node alone


def test_search_words_across_tokens_and_the_store(view: GraphView):
    from viewer.features import FeatureHit
    from viewer.model import prompt_positions

    tokens = ["<bos>", "The", " cap", "ital", " of", " Par", "is"]
    assert prompt_positions(tokens, "capital") == [2, 3] and prompt_positions(tokens, "paris") == [5, 6]
    assert prompt_positions(tokens, "l of p") == [3, 4, 5] and prompt_positions(tokens, "zzz") == []
    g = view.graph.model_copy(deep=True)
    g.metadata.tokens[2:4] = [" cap", "ital"]
    v = GraphView.build(g)
    hits = search(v, "Capital", limit=1000)
    embs = [i for i in hits if v.node(i).kind is NodeKind.EMBEDDING]
    assert embs == ["EMB@2", "EMB@3"]
    assert {i for i in hits if v.node(i).kind is NodeKind.FEATURE} == {
        n.id for n in v.graph.nodes if n.kind is NodeKind.FEATURE and n.pos in (2, 3)}
    target = next(n for n in v.graph.nodes if n.kind is NodeKind.FEATURE)

    class Store:
        def search(self, text: str, limit: int = 30) -> list[FeatureHit]:
            return [FeatureHit(target.layer, target.feature or 0, "the Eiffel tower", 1.0)] if "eiffel" in text else []

    assert search(v, "eiffel", store=Store()) == [n.id for n in v.graph.nodes if (n.layer, n.feature) == (
        target.layer, target.feature) and n.kind is NodeKind.FEATURE]  # fmt: skip


def test_coordinates(view: GraphView):
    co = coordinates(view)
    n_layers = view.graph.metadata.n_layers
    for i, n in enumerate(view.graph.nodes):
        want = {NodeKind.EMBEDDING: 0, NodeKind.LOGIT: n_layers + 1}.get(n.kind, n.layer + 1)
        assert abs(co.y[i] - want) <= CELL_BAND / 2
    assert np.all(np.diff(co.col_center) > 0)
    assert len({(x, y) for x, y in zip(co.x, co.y, strict=True)}) == view.n_nodes  # no two nodes on one spot
    logits = sorted((n for n in view.graph.nodes if n.kind is NodeKind.LOGIT), key=lambda n: -(n.probability or 0))
    xs = [co.x[view.row[n.id]] for n in logits]
    assert xs == sorted(xs, reverse=True)  # most probable rightmost
    for i, n in enumerate(view.graph.nodes):  # each node lies inside its token's column
        assert abs(co.x[i] - co.col_center[n.pos]) < co.col_width[n.pos] / 2 or n.kind is NodeKind.LOGIT


def test_crowded_cells_form_a_grid():
    view = GraphView.build(synthetic_graph(synthetic_attribution(2, 4, 300, 5, 4, seed=1), all_nodes=True))
    co = coordinates(view)
    feats = view.kind == NodeKind.FEATURE.code
    assert len({(x, y) for x, y in zip(co.x, co.y, strict=True)}) == view.n_nodes
    assert len(np.unique(co.y[feats])) > 2 * 2  # several rows per layer band
    assert np.all(np.abs(co.y[feats] - (view.layer[feats] + 1)) <= CELL_BAND / 2)
    assert np.all(np.abs(co.x[feats] - co.col_center[view.pos[feats]]) < co.col_width[view.pos[feats]] / 2)


def test_figure_nodes_and_escaping(view: GraphView):
    co = coordinates(view)
    target = view.graph.nodes[0].id
    fig = main_figure(view, co, {target: XSS}, "rev")
    assert len(fig["data"]) == len(NodeTrace) and fig["layout"]["uirevision"] == "rev"
    assert fig["data"][NodeTrace.LABELS]["text"] == []  # no placement given: no labels
    seen = []
    for kind in NodeKind:
        trace = fig["data"][NODE_TRACE[kind]]
        assert trace["type"] == "scattergl" and trace["marker"]["symbol"] == GLYPH[kind]
        assert all(view.graph.nodes[view.row[i]].kind is kind for i in trace["customdata"])
        seen += trace["customdata"]
    assert sorted(seen) == sorted(n.id for n in view.graph.nodes)
    hover = " ".join(t for tr in fig["data"] for t in tr.get("hovertext", []))
    assert "&lt;img src=x onerror=alert(1)&gt;" in hover and "<img" not in hover
    assert fig["layout"]["xaxis"]["ticktext"][0] == "&lt;bos&gt;" and view.graph.metadata.tokens[0] == "<bos>"
    assert fig["layout"]["yaxis"]["ticktext"][0] == "Emb" and fig["layout"]["yaxis"]["ticktext"][-1] == "Lgt"
    assert display_name(view.graph.nodes[view.row[target]], {target: XSS}) == XSS
    over = overlay_figure(view, co, overlay(view, co, target, [], [], LinkType.BOTH))
    assert len(over["data"]) == len(OverlayTrace) + 2 * N_BINS - 1
    assert over["data"][OverlayTrace.CLICKED]["x"].tolist() == [co.x[0]]
    for axis in ("xaxis", "yaxis"):  # the overlay lies exactly on the main figure
        assert over["layout"][axis]["range"] == fig["layout"][axis]["range"]
    assert over["layout"]["margin"] == fig["layout"]["margin"]


def segments(fig_or_ov) -> list[tuple[float, float, float, float]]:
    out = []
    for x, y in fig_or_ov.edges:
        for k in range(0, len(x), 3):
            out.append((x[k], y[k], x[k + 1], y[k + 1]))
            assert np.isnan(x[k + 2]) and np.isnan(y[k + 2])
    return out


@pytest.mark.parametrize("link_type", list(LinkType))
def test_overlay_edges(view: GraphView, link_type: LinkType):
    co = coordinates(view)
    node = feature_with_edges(view)
    ov = overlay(view, co, node, [], [], link_type)
    want = [e for e in view.graph.edges if (e.target == node and link_type is not LinkType.OUTPUT)
            or (e.source == node and link_type is not LinkType.INPUT)]  # fmt: skip
    got = segments(ov)
    assert len(got) == len(want)
    xy = {n.id: (co.x[i], co.y[i]) for i, n in enumerate(view.graph.nodes)}
    assert sorted(got) == sorted((*xy[e.source], *xy[e.target]) for e in want)
    assert ov.clicked[0].tolist() == [xy[node][0]] and len(ov.pinned[0]) == 0


def test_overlay_pinned_edges_and_bins(view: GraphView):
    co = coordinates(view)
    logit = next(n.id for n in view.graph.nodes if n.kind is NodeKind.LOGIT)
    pins = [logit, *(e.source for e in view.graph.edges if e.target == logit)][:3]
    pins.append(next(n.id for n in view.graph.nodes if n.id not in pins))
    among = overlay(view, co, None, pins, [], LinkType.BOTH)  # default: only edges between two pinned nodes
    assert len(segments(among)) == sum(e.target in pins and e.source in pins for e in view.graph.edges) >= 2
    ov = overlay(view, co, None, pins, [], LinkType.BOTH, all_pinned_edges=True)
    assert len(segments(ov)) == sum(e.target in pins or e.source in pins for e in view.graph.edges)
    assert len(segments(ov)) > len(segments(among))
    assert len(ov.pinned[0]) == 4 and len(ov.clicked[0]) == 0
    inputs = overlay(view, co, None, pins, [], LinkType.INPUT, all_pinned_edges=True)
    assert len(segments(inputs)) == sum(e.target in pins for e in view.graph.edges)
    wn = np.array([0.0, 0.001, 0.05, 0.2, 0.39, 0.4, 3.0, -0.001, -0.2, -5.0])
    assert edge_bin(wn).tolist() == [0, 0, 1, 2, 3, 3, 3, N_BINS, N_BINS + 2, 2 * N_BINS - 1]
    widths = [edge_style(k)[1] for k in range(N_BINS)]
    assert widths == sorted(widths) and widths[-1] == 3.0
    rgb = lambda s: [int(v) for v in s[4:-1].split(",")]  # noqa: E731
    assert all(rgb(edge_style(k)[0])[1] > rgb(edge_style(k)[0])[0] for k in range(N_BINS))  # green
    assert all(rgb(edge_style(k)[0])[0] > rgb(edge_style(k)[0])[1] for k in range(N_BINS, 2 * N_BINS))  # purple


def test_hover_edges(view: GraphView):
    co = coordinates(view)
    node = feature_with_edges(view)
    traces = hover_edges(view, co, node)
    xy = {n.id: (co.x[i], co.y[i]) for i, n in enumerate(view.graph.nodes)}
    for trace, sign in ((OverlayTrace.HOVER_POS, 1), (OverlayTrace.HOVER_NEG, -1)):
        x, y = traces[trace]
        got = sorted((x[k], y[k], x[k + 1], y[k + 1]) for k in range(0, len(x), 3))
        want = sorted((*xy[e.source], *xy[e.target]) for e in view.graph.edges
                      if node in (e.source, e.target) and (e.weight >= 0) == (sign > 0))  # fmt: skip
        assert got == want
    assert all(len(x) == 0 for x, _ in hover_edges(view, co, None).values())


def test_plotly_text_shows_quotes_literally():
    g = synthetic_graph(synthetic_attribution(seed=2))
    g.metadata.tokens[1:4] = ['"', "'m", "<script>alert(1)</script>"]
    v = GraphView.build(g)
    co = coordinates(v)
    fig = main_figure(v, co, {}, "r")
    ticks = fig["layout"]["xaxis"]["ticktext"]
    assert ticks[1:4] == ['"', "'m", "&lt;script&gt;alert(1)&lt;/script&gt;"]  # no &quot; / &#x27; for plotly
    hover = " ".join(t for tr in fig["data"] for t in tr.get("hovertext", []))
    assert "&quot;" not in hover and "&#x27;" not in hover and 'Output "' in hover


def test_subgraph_layers_and_edge_sums(view: GraphView):
    from viewer.state import UrlState
    from viewer.subgraph import MAX_EDGE_PX, Y_STEP, layer_row, subgraph_elements

    logit = next(n.id for n in view.graph.nodes if n.kind is NodeKind.LOGIT)
    srcs = [e.source for e in view.graph.edges if e.target == logit][:3]
    st = UrlState(pinned=(logit, *srcs), supernodes=(Supernode(label="grp", members=srcs[:2]),))
    els = subgraph_elements(view, st)
    nodes = {e["data"]["id"]: e for e in els if "source" not in e["data"]}
    y = {i: e["position"]["y"] for i, e in nodes.items()}
    assert y[logit] < min(y[s] for s in srcs)  # logits on top (y grows downwards)
    top = view.graph.metadata.n_layers + 1
    for a in (logit, srcs[2]):  # one row per layer
        assert y[a] == (top - layer_row(view, a)) * Y_STEP
    assert y["group:0"] == (top - round(sum(layer_row(view, m) for m in srcs[:2]) / 2)) * Y_STEP
    m0, m1 = (nodes[m]["position"] for m in srcs[:2])
    assert m0["y"] == m1["y"] and m0["x"] != m1["x"]  # members side by side inside the box
    edges = {(e["data"]["source"], e["data"]["target"]): e["data"] for e in els if "source" in e["data"]}
    want = sum(e.weight for e in view.graph.edges if e.source in srcs[:2] and e.target == logit)
    assert abs(edges[("group:0", logit)]["weight"] - want) < 1e-9
    assert all(1 <= d["width"] <= MAX_EDGE_PX for d in edges.values())
