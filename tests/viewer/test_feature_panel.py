"""The detail panel's feature dashboard on a real feature store (the planted subject): label, shading, bars,
histogram; the viewer's FeatureStore API (describe, labels, search) and how a graph finds its store."""

from __future__ import annotations

import pytest
from dash import dcc, html

from tests.tracer import features_subject as subj
from tests.viewer.test_callbacks import texts
from tracer.errors import TracerError
from tracer.features.build import BuildConfig, build_store
from tracer.features.corpus import corpus_stream
from tracer.features.viewer_store import ViewerStore
from tracer.layout import NodeKind
from tracer.schema import GraphFile
from viewer import layout
from viewer.feature_panel import feature_dashboard
from viewer.features import find_store, fits
from viewer.model import GraphView

HASH = "t0"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("panel")
    tok, m = subj.tokenizer(), subj.model()
    stream = corpus_stream(tok, subj.corpus(root / "corpus.txt"), 10_000, None)
    identity = {"model": {"name": "tiny", "content_hash": "m0"}, "transcoders": {"name": "clt", "content_hash": HASH},
                "corpus": "corpus.txt"}  # fmt: skip
    cfg = BuildConfig(tokens=1_500, seq_len=32, batch_seqs=8, top_k=5, reservoir=8)
    return build_store(m, subj.transcoder(m), tok, stream, root / "s.sqlite", identity, cfg, progress=False).path


def elements(component, kind) -> list:
    if isinstance(component, list | tuple):
        return [e for c in component for e in elements(c, kind)]
    out = [component] if isinstance(component, kind) else []
    children = getattr(component, "children", None)
    return out + (elements(children, kind) if children is not None else [])


def test_dashboard_shows_label_shading_bars_and_histogram(store_path, graph: GraphFile):
    fs = ViewerStore.open(store_path, HASH)
    desc = fs.describe(*subj.PLANTED)
    assert desc is not None and "France" in desc.label
    node = next(n for n in graph.nodes if n.kind is NodeKind.FEATURE).model_copy(
        update={"layer": subj.PLANTED[0], "feature": subj.PLANTED[1]})  # fmt: skip
    panel = layout.detail_panel(node, GraphView.build(graph), {}, desc)
    shown = texts(panel)
    assert desc.label in shown and "Top activations" in shown and "Paris" in shown
    spans = [s for s in elements(panel, html.Span)  # the context tokens (bars are empty spans)
             if "backgroundColor" in (getattr(s, "style", None) or {}) and isinstance(s.children, str)]
    france = [s for s in spans if s.children == "France"]
    assert france and all(s.style["backgroundColor"].endswith(",1.00)") for s in france)  # one value: the max
    assert all(s.style["backgroundColor"].endswith(",0.00)") for s in spans if s.children != "France")
    (hist,) = elements(feature_dashboard(desc), dcc.Graph)
    assert sum(hist.figure["data"][0]["y"]) == sum(desc.histogram[1]) > 0  # type: ignore[index]


def test_labels_search_and_unknown_features(store_path):
    fs = ViewerStore.open(store_path, HASH)
    got = fs.labels([subj.PLANTED, (1, 7), (5, 0)])
    assert "France" in got[subj.PLANTED] and (5, 0) not in got
    assert fs.search("Paris")[0][:2] == subj.PLANTED
    assert fs.describe(5, 0) is None and fs.describe(0, 99) is None


def test_find_store_checks_the_graph_transcoders(store_path, graph: GraphFile):
    meta = graph.metadata.model_copy(deep=True)
    meta.transcoders.content_hash = HASH
    assert find_store(meta, store_path) is not None
    meta.settings["feature_store"] = str(store_path)
    assert find_store(meta) is not None  # recorded by the trace
    meta.transcoders.content_hash = "other"
    with pytest.raises(TracerError, match="other transcoders"):
        find_store(meta, store_path)
    assert find_store(meta) is None  # found automatically but for other transcoders: skipped


def test_a_served_store_only_answers_for_graphs_of_its_transcoders(store_path, graph: GraphFile):
    fs = ViewerStore.open(store_path, HASH)
    meta = graph.metadata.model_copy(deep=True)
    meta.transcoders.content_hash = HASH
    assert fits(fs, meta) is fs
    meta.transcoders.content_hash = "other"
    assert fits(fs, meta) is None and fits(None, meta) is None
