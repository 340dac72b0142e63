"""Browser tests of the readability issue's bugs and features (dash[testing] + Debian chromium, headless).

One page per test: quotes and angle brackets read literally in ticks, labels and hover; a corrupt sidecar leaves
the graph up with the slider off and a note; error cards name files relative to the served folder; ignored URL
values get a dismissible note; labels sit beside the nodes; hovering draws the node's edges; pinned nodes show only
the edges among them until the toggle is on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.common.action_chains import ActionChains

from tests.viewer.test_browser import PLOT_READY, TIMEOUT, free_port, wait_js
from tracer.graphfile import load_graph, save_graph
from tracer.layout import NodeKind
from tracer.result import Attribution
from tracer.schema import GraphFile
from viewer.app import create_app
from viewer.figures import NODE_TRACE, NodeTrace, OverlayTrace
from viewer.model import GraphView

pytestmark = pytest.mark.browser
XSS = "<script>window.__x=1</script>"
TICKS = "return [...document.querySelectorAll('#main-graph .xtick text')].map(t => t.textContent);"
LABELS = "return [...document.querySelectorAll('#main-graph .textpoint text')].map(t => t.textContent);"
HOVER_EDGES = f"""const o = document.querySelector('#overlay-graph .js-plotly-plot');
const d = o && o.data, p = {int(OverlayTrace.HOVER_POS)}, n = {int(OverlayTrace.HOVER_NEG)};
return d ? (d[p].x.length + d[n].x.length) / 3 : -1;"""
EDGES = f"""const o = document.querySelector('#overlay-graph .js-plotly-plot'); let n = 0;
for (let i = 0; i < {int(OverlayTrace.PINNED)}; i++) {{ n += o.data[i].x.length / 3; }} return n;"""
NODE_CENTER = """const gd = document.querySelector('#main-graph .js-plotly-plot'), fl = gd._fullLayout;
const t = gd.data[arguments[0]], i = t.customdata.indexOf(arguments[1]), r = gd.getBoundingClientRect();
return [fl.xaxis.l2p(t.x[i]) + fl._size.l - r.width / 2, fl.yaxis.l2p(t.y[i]) + fl._size.t - r.height / 2];"""


@pytest.fixture
def folder(tmp_path: Path, graph: GraphFile, attribution: Attribution) -> Path:
    g = graph.model_copy(deep=True)
    g.metadata.tokens[1:3] = ['"', "'m"]
    feat = next(n for n in g.nodes if n.kind is NodeKind.FEATURE)
    feat.label = XSS
    save_graph(tmp_path / "quotes.json", g, attribution)
    save_graph(tmp_path / "badside.json", g, attribution)
    (tmp_path / "badside.adjacency.safetensors").write_bytes(b"\x00corrupt")
    (tmp_path / "broken.json").write_text("{oops")
    return tmp_path


def test_bugs_and_labels(dash_duo, folder: Path):
    view = GraphView.build(load_graph(folder / "quotes.json"))
    dash_duo.start_server(create_app(folder), port=free_port())
    base = dash_duo.server_url

    # 1. quotes read literally; a <script> label is text and runs nothing; labels beside nodes
    dash_duo.driver.get(f"{base}/?graph=quotes.json")
    wait_js(dash_duo, PLOT_READY)
    ticks = wait_js(dash_duo, TICKS, lambda t: len(t) == len(view.graph.metadata.tokens))
    assert ticks[1:3] == ['"', "'m"] and ticks[0] == "<bos>"
    labels = wait_js(dash_duo, LABELS, bool)
    assert XSS in labels and " tok0" in labels  # the feature's label, a logit's token
    assert not any("&" in t for t in labels)
    assert dash_duo.driver.execute_script("return window.__x === undefined")

    # 7. hover draws the hovered node's edges
    node = max((n for n in view.graph.nodes if n.kind is NodeKind.LOGIT),
               key=lambda n: len(view.incoming(view.row[n.id])))  # fmt: skip
    dx, dy = dash_duo.driver.execute_script(NODE_CENTER, int(NODE_TRACE[node.kind]), node.id)
    plot = dash_duo.find_element("#main-graph .js-plotly-plot")
    ActionChains(dash_duo.driver).move_to_element(plot).move_by_offset(round(dx), round(dy)).perform()
    n_edges = len(view.incoming(view.row[node.id])) + len(view.outgoing(view.row[node.id]))
    wait_js(dash_duo, HOVER_EDGES, lambda n: n == n_edges)

    # pinned nodes: only the edges among them, all of theirs with the toggle
    pins = [node.id, view.graph.nodes[int(view.src[view.incoming(view.row[node.id])[0]])].id]
    dash_duo.driver.get(f"{base}/?graph=quotes.json&pinnedIds={','.join(pins)}")
    wait_js(dash_duo, PLOT_READY)
    among = sum(e.source in pins and e.target in pins for e in view.graph.edges)
    wait_js(dash_duo, EDGES, lambda n: n == among)
    dash_duo.find_element("#pinned-edges input").click()
    every = sum(e.source in pins or e.target in pins for e in view.graph.edges)
    wait_js(dash_duo, EDGES, lambda n: n == every)
    assert "pinnedEdges=all" in dash_duo.driver.current_url

    # 3. corrupt sidecar: the graph shows, the slider is off, a note says why; the URL's threshold is ignored
    dash_duo.driver.get(f"{base}/?graph=badside.json&pruningThreshold=0.5")
    wait_js(dash_duo, PLOT_READY)
    dash_duo.wait_for_contains_text("#scores", "re-pruning and subgraph scores are off", timeout=TIMEOUT)
    wait_js(dash_duo, "return !!document.querySelector('#threshold [data-disabled]');")
    assert str(folder) not in dash_duo.find_element("#scores").text

    # 4. error cards name files relative to the served folder
    dash_duo.driver.get(f"{base}/?graph=broken.json")
    dash_duo.wait_for_contains_text(".error-card", "broken.json is not valid JSON", timeout=TIMEOUT)
    assert str(folder) not in dash_duo.find_element(".error-card").text

    # 5. ignored URL values: a note names them; dismissing hides it
    dash_duo.driver.get(f"{base}/?graph=quotes.json&pruningThreshold=abc&supernodes=garbage&clerps=[1]")
    dash_duo.wait_for_contains_text("#url-note", "pruningThreshold=abc", timeout=TIMEOUT)
    assert "supernodes=garbage" in dash_duo.find_element("#url-note").text
    dash_duo.find_element("#url-note-close").click()
    wait_js(dash_duo, "return getComputedStyle(document.getElementById('url-note')).display === 'none';")
    assert int(NodeTrace.LABELS) == len(NODE_TRACE)
    assert dash_duo.get_logs() == []
