"""Browser tests: the subgraph panel with a supernode box, search by full id and by text, both figure exports.

A supernode is a cytoscape compound node whose children are its members; tapping a member selects it in the main
graph (the detail panel and the clicked ring); search finds a node by its full id and the tokens and features of
a word; the paper-figure buttons download an SVG (with the labels as text) and a PNG of the chosen size.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from dash.testing.wait import until
from PIL import Image
from selenium.webdriver.common.keys import Keys

from tests.viewer.test_browser import PLOT_READY, TIMEOUT, free_port, wait_js
from tracer.graphfile import load_graph
from tracer.layout import NodeKind
from viewer.app import create_app
from viewer.figures import OverlayTrace
from viewer.model import GraphView, display_name, search

pytestmark = pytest.mark.browser
CY = """const c = document.getElementById('subgraph')._cyreg; if (!c) { return null; }
return c.cy.nodes().map(n => [n.id(), n.data('label'), n.isParent(), n.isChild() ? n.parent().id() : null]);"""
TAP = "document.getElementById('subgraph')._cyreg.cy.getElementById(arguments[0]).emit('tap');"
RINGS = f"""const o = document.querySelector('#overlay-graph .js-plotly-plot'), d = o && o.data;
return d ? [d[{int(OverlayTrace.SEARCH)}].x.length, d[{int(OverlayTrace.CLICKED)}].x.length] : null;"""


def test_subgraph_search_and_figures(dash_duo, graph_dir: Path):
    view = GraphView.build(load_graph(graph_dir / "small.json"))
    logit = next(n.id for n in view.graph.nodes if n.kind is NodeKind.LOGIT)
    members = [e.source for e in view.graph.edges if e.target == logit][:2]
    dash_duo.start_server(create_app(graph_dir), port=free_port())
    sup = f'[["capital cities","{members[0]}","{members[1]}"]]'
    dash_duo.driver.get(f"{dash_duo.server_url}/?graph=small.json&pinnedIds={logit},{','.join(members)}"
                        f"&supernodes={sup}")  # fmt: skip
    wait_js(dash_duo, PLOT_READY)

    # the supernode is a labelled box holding its members
    nodes = wait_js(dash_duo, CY, lambda v: v and len(v) == 4)
    box = next(n for n in nodes if n[2])
    assert box[1] == "capital cities"
    assert sorted(n[0] for n in nodes if n[3] == box[0]) == sorted(members)
    dash_duo.wait_for_contains_text("#subgraph-scores", "replacement", timeout=TIMEOUT)

    # tapping a member selects it in the main graph
    dash_duo.driver.execute_script(TAP, members[1])
    name = display_name(view.graph.nodes[view.row[members[1]]])
    dash_duo.wait_for_text_to_equal("#detail h3", name, timeout=TIMEOUT)
    until(lambda: f"clickedId={members[1]}" in dash_duo.driver.current_url, timeout=TIMEOUT)
    wait_js(dash_duo, RINGS, lambda v: v and v[1] == 1)

    # search: a full node id finds that node alone; a word finds its tokens and features
    box_in = dash_duo.find_element("#search")
    box_in.send_keys(members[0], Keys.ENTER)
    dash_duo.wait_for_contains_text("#search-results h4", "1 match", timeout=TIMEOUT)
    assert [e.get_attribute("title") for e in dash_duo.find_elements("#search-results .node-link")] == [members[0]]
    box_in.clear()
    box_in.send_keys("France", Keys.ENTER)
    want = search(view, "France")
    until(lambda: [e.get_attribute("title") for e in dash_duo.find_elements("#search-results .node-link")] == want,
          timeout=TIMEOUT)  # fmt: skip
    assert "EMB@4" in want and any(view.node(i).kind is NodeKind.FEATURE for i in want)
    wait_js(dash_duo, RINGS, lambda v: v and v[0] == len(want))

    # paper figures: SVG with labels as text, PNG at the chosen size
    downloads = Path(dash_duo.download_path)
    dash_duo.driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                    {"behavior": "allow", "downloadPath": str(downloads)})  # fmt: skip
    dash_duo.find_element("#figure-kind input[value='subgraph']").click()
    size = dash_duo.find_element("#figure-size")
    size.clear()
    size.send_keys("4x3", Keys.ENTER)
    dash_duo.find_element("#figure-png").click()
    until(lambda: (downloads / "small.subgraph.png").exists(), timeout=TIMEOUT)
    until(lambda: Image.open(downloads / "small.subgraph.png").size == (800, 600), timeout=TIMEOUT)
    dash_duo.find_element("#figure-kind input[value='graph']").click()
    dash_duo.find_element("#figure-svg").click()
    until(lambda: (downloads / "small.graph.svg").exists(), timeout=TIMEOUT)
    svg = ET.fromstring((downloads / "small.graph.svg").read_text())
    texts = {"".join(t.itertext()) for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert view.graph.metadata.prompt in texts and "excitatory edge" in texts and " tok0" in texts
    assert dash_duo.get_logs() == []
