"""Paper figures (viewer.paper, `tracer figure`, the viewer's figure buttons): size, edges, labels, legend."""

from __future__ import annotations

import base64
import io
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tracer.half_write import fail_halfway, snapshot
from tracer.cli import main
from tracer.graphfile import save_graph
from tracer.layout import NodeKind
from tracer.schema import GraphFile, Supernode
from viewer.handlers import Env, handle_figure
from viewer.ids import Id
from viewer.model import GraphView
from viewer.paper import FigureKind, _graph_edges, render
from viewer.state import UrlState

XSS = "<script>alert('$x$')</script>"
SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(data: bytes) -> list[str]:
    root = ET.fromstring(data)
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


@pytest.fixture
def view(graph: GraphFile) -> GraphView:
    return GraphView.build(graph)


def pins(view: GraphView) -> list[str]:
    logit = next(n.id for n in view.graph.nodes if n.kind is NodeKind.LOGIT)
    return [logit, *(e.source for e in view.graph.edges if e.target == logit)][:4]


def test_graph_svg_has_labels_tokens_legend_and_size(view: GraphView):
    f = next(n for n in view.graph.nodes if n.kind is NodeKind.FEATURE)
    data = render(view, UrlState(labels={f.id: XSS}), FigureKind.GRAPH, "svg", 8, 5)
    root = ET.fromstring(data)
    assert root.get("width") == "576pt" and root.get("height") == "360pt"  # 8 x 5 inches
    texts = svg_texts(data)
    assert XSS in texts  # the label as text: escaped in the XML, never markup, no math
    assert {"feature", "error", "token", "output logit", "excitatory edge"} <= set(texts)
    assert " France" in texts and "Lgt" in texts and view.graph.metadata.prompt in texts
    assert not list(root.iter(f"{SVG}script"))


def test_graph_edges_are_those_among_the_pinned(view: GraphView):
    p = pins(view)
    rows = [view.row[i] for i in p]
    got = {(view.graph.nodes[int(view.src[e])].id, view.graph.nodes[int(view.tgt[e])].id)
           for e in _graph_edges(view, rows)}  # fmt: skip
    want = {(e.source, e.target) for e in view.graph.edges if e.source in p and e.target in p}
    assert got == want and len(want) >= 3


def test_png_size_and_subgraph(view: GraphView):
    p = pins(view)
    st = UrlState(pinned=tuple(p), supernodes=(Supernode(label="capital group", members=p[1:3]),))
    png = render(view, st, FigureKind.SUBGRAPH, "png", 6, 4, dpi=50)
    img = Image.open(io.BytesIO(png))
    assert img.size == (300, 200)
    assert np.asarray(img.convert("L")).min() < 128  # something is drawn
    texts = svg_texts(render(view, st, FigureKind.SUBGRAPH, "svg", 6, 4))
    assert "capital group" in texts and "excitatory edge" in texts
    assert {f"F{n.layer}.{n.feature}" for n in view.graph.nodes if n.id in p[1:3]} <= set(texts)


def test_cli(tmp_path: Path, graph: GraphFile, capsys):
    path = save_graph(tmp_path / "g.json", graph)
    view = GraphView.build(graph)
    p = ",".join(pins(view))
    assert main(["figure", str(path), "-o", str(tmp_path / "f.svg"), "--pinned", p]) == 0
    assert main(["figure", str(path), "-o", str(tmp_path / "s.png"), "--pinned", p, "--subgraph", "--dpi", "40",
                 "--width", "5", "--height", "3", "--supernode", f"grp={','.join(pins(view)[1:3])}"]) == 0  # fmt: skip
    assert Image.open(tmp_path / "s.png").size == (200, 120)
    assert graph.metadata.prompt in svg_texts((tmp_path / "f.svg").read_bytes())
    capsys.readouterr()
    for args, msg in ((["-o", str(tmp_path / "f.pdf")], "must end in .svg or .png"),
                      (["-o", str(tmp_path / "x.svg"), "--pinned", "F9.9@9"], "not in g.json"),
                      (["-o", str(tmp_path / "x.svg"), "--subgraph"], "needs pinned nodes"),
                      (["-o", str(tmp_path / "x.svg"), "--width", "0"], "1-60 inches")):  # fmt: skip
        assert main(["figure", str(path), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and "Traceback" not in err
    assert not (tmp_path / "x.svg").exists()


def test_viewer_figure_download(env: Env, graph: GraphFile):
    view = GraphView.build(graph)
    q = f"?graph=small.json&pinnedIds={','.join(pins(view))}"
    png = handle_figure(env, Id.FIGURE_PNG.value, "subgraph", "4x3", q)
    assert png["base64"] and png["filename"] == "small.subgraph.png"
    assert Image.open(io.BytesIO(base64.b64decode(png["content"]))).size == (800, 600)  # 200 dpi
    svg = handle_figure(env, Id.FIGURE_SVG.value, "graph", "10 x 6", q)
    assert svg["filename"] == "small.graph.svg" and ET.fromstring(svg["content"]).get("width") == "720pt"
    with pytest.raises(Exception, match="WIDTHxHEIGHT"):
        handle_figure(env, Id.FIGURE_SVG.value, "graph", "big", q)


def test_figure_write_failing_halfway_keeps_the_old_file(tmp_path: Path, graph: GraphFile, monkeypatch, capsys):
    path = save_graph(tmp_path / "g.json", graph)
    out = tmp_path / "f.svg"
    out.write_bytes(b"old figure")
    before = snapshot(tmp_path)
    log = fail_halfway(monkeypatch)
    assert main(["figure", str(path), "-o", str(out), "--pinned", ",".join(pins(GraphView.build(graph)))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and "No space left on device" in err and err.count("\n") == 1
    [(partial, size)] = log
    assert partial.parent == tmp_path and partial != out and size > 1000  # half an SVG was on disk, in a temp file
    assert snapshot(tmp_path) == before  # the old figure as it was, no temp file
