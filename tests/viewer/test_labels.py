"""Labels on the main graph: which nodes, from which source, and a placement with no two labels overlapping."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest

from tracer.layout import NodeKind
from tracer.schema import GraphFile
from viewer.features import FeatureDescription, FeatureHit
from viewer.figures import NodeTrace, coordinates, main_figure, marker_sizes, placement
from viewer.labels import LINE_PX, MIN_FEATURE_LABELS, PLOT_PX, label_px, node_label, short, store_labels
from viewer.model import GraphView
from viewer.synthetic import synthetic_attribution, synthetic_graph

XSS = "<script>alert(1)</script>"


class LabelStore:
    """The FeatureStore method the main graph uses (the others are never called); records what it was asked."""

    def __init__(self, labels: dict[tuple[int, int | None], str]):
        self.table, self.asked = labels, []

    def labels(self, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], str]:
        keys = list(keys)
        self.asked += keys
        return {k: self.table[k] for k in keys if k in self.table}

    def describe(self, layer: int, feature: int) -> FeatureDescription | None:
        raise AssertionError("not used by the main graph")

    def search(self, text: str, limit: int = 30) -> list[FeatureHit]:
        raise AssertionError("not used by the main graph")


@pytest.fixture(scope="module")
def big() -> GraphView:
    return GraphView.build(synthetic_graph(synthetic_attribution(4, 8, 400, 6, 6, seed=3), all_nodes=True))


def boxes(view: GraphView, placed) -> np.ndarray:
    """Each placed label's pixel box, recomputed from plotly's textposition meaning."""
    px, py = coordinates(view).to_px()
    sizes = marker_sizes(view)
    out = []
    for i, text, side in zip(placed.rows, placed.text, placed.position, strict=True):
        w, r, x, y = label_px(text), sizes[i] / 2 + 1, px[i], py[i]
        vertical, horizontal = side.split()
        x0 = {"right": x + r, "left": x - r - w, "center": x - w / 2}[horizontal]
        y0 = {"middle": y - LINE_PX / 2, "top": y - r - LINE_PX, "bottom": y + r}[vertical]
        out.append((x0, y0, x0 + w, y0 + LINE_PX))
    return np.array(out)


def test_no_two_labels_overlap(big: GraphView):
    labels = {n.id: f"feature number {k}" for k, n in enumerate(big.graph.nodes) if n.kind is NodeKind.FEATURE}
    placed = placement(big, coordinates(big), labels, {})
    b = boxes(big, placed)
    assert len(b) > MIN_FEATURE_LABELS
    for k in range(len(b)):
        o = np.delete(b, k, axis=0)
        assert not ((b[k, 0] < o[:, 2]) & (o[:, 0] < b[k, 2]) & (b[k, 1] < o[:, 3]) & (o[:, 1] < b[k, 3])).any()


def test_logits_above_the_last_column(big: GraphView):
    co = coordinates(big)
    lg = np.flatnonzero(big.kind == NodeKind.LOGIT.code)
    last = len(big.graph.metadata.tokens) - 1
    assert np.all(np.abs(co.x[lg] - co.col_center[last]) <= co.col_width[last] / 2)
    assert np.all(co.y[lg] == big.graph.metadata.n_layers + 1)
    probs = [big.graph.nodes[i].probability for i in lg[np.argsort(co.x[lg])]]
    assert probs == sorted(probs)  # most probable rightmost
    # the column is wide enough for the logits' labels side by side at the nominal plot size
    px, _ = co.to_px()
    gaps = np.diff(np.sort(px[lg]))
    widths = [label_px(big.graph.nodes[i].token or "") for i in lg]
    assert gaps.min() >= min(widths) * 0.9


def test_label_sources_and_priority(graph: GraphFile):
    view = GraphView.build(graph)
    feats = sorted((n for n in view.graph.nodes if n.kind is NodeKind.FEATURE), key=lambda n: -n.influence)
    edited, stored = feats[-1], feats[-2]  # the least influential ones: labelled, so they still come first
    store = LabelStore({(stored.layer, stored.feature): "from the store", (999, 1): "not in this graph"})
    auto = store_labels(view, store)
    assert auto == {stored.id: "from the store"}
    assert {(f.layer, f.feature) for f in feats} <= set(store.asked)
    placed = placement(view, coordinates(view), {edited.id: XSS}, auto)
    named = dict(zip(placed.rows, placed.text, strict=True))
    assert named[view.row[edited.id]] == short(XSS) and named[view.row[stored.id]] == "from the store"
    logits = [i for i in placed.rows if view.kind[i] == NodeKind.LOGIT.code]
    assert placed.rows[: len(logits)] == tuple(logits)  # logits are placed first
    assert store_labels(view, None) == {}


def test_edited_label_wins_over_file_and_store(graph: GraphFile):
    """One node with all three labels shows the edit; then the file's label beats the store's; the store's shows
    only where neither is set; an edited logit shows the edit instead of its token."""
    g = graph.model_copy(deep=True)
    feats = sorted((n for n in g.nodes if n.kind is NodeKind.FEATURE), key=lambda n: -n.influence)
    all3, file_store, store_only, file_only = feats[-4:]
    for n, text in ((all3, "file label A"), (file_store, "file label B"), (file_only, "file label D")):
        n.label = text
    logit = next(n for n in g.nodes if n.kind is NodeKind.LOGIT)
    view = GraphView.build(g)
    store = LabelStore({(n.layer, n.feature): f"store {k}" for k, n in enumerate((all3, file_store, store_only))})
    auto = store_labels(view, store)
    assert auto == {all3.id: "store 0", file_store.id: "store 1", store_only.id: "store 2"}  # whatever the file says
    edits = {all3.id: "edited A", logit.id: "edited logit"}
    want = {all3.id: "edited A", file_store.id: "file label B", store_only.id: "store 2", file_only.id: "file label D",
            logit.id: "edited logit"}  # fmt: skip
    assert {i: node_label(view, view.row[i], edits, auto) for i in want if i != logit.id} == {
        i: t for i, t in want.items() if i != logit.id}  # fmt: skip
    placed = placement(view, coordinates(view), edits, auto)
    named = {view.graph.nodes[i].id: t for i, t in zip(placed.rows, placed.text, strict=True)}
    assert {i: named.get(i) for i in want} == want
    assert "store 0" not in placed.text and "store 1" not in placed.text and "file label A" not in placed.text
    no_edit = placement(view, coordinates(view), {}, auto)
    assert dict(zip(no_edit.rows, no_edit.text, strict=True))[view.row[all3.id]] == "file label A"


def test_label_trace_escapes_for_plotly(graph: GraphFile):
    view = GraphView.build(graph)
    f = next(n for n in view.graph.nodes if n.kind is NodeKind.FEATURE)
    co = coordinates(view)
    placed = placement(view, co, {f.id: 'it\'s "x" <b>&'}, {})
    trace = main_figure(view, co, {}, "r", placed)["data"][NodeTrace.LABELS]
    assert trace["type"] == "scatter" and trace["hoverinfo"] == "skip"
    assert 'it\'s "x" &lt;b&gt;&amp;' in trace["text"]
    assert len(trace["x"]) == len(trace["text"]) == len(trace["textposition"]) == len(placed.rows)
    assert PLOT_PX[0] > 0
