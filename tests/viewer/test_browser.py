"""Real-browser tests (dash[testing] + Debian chromium/chromium-driver, headless; flags in conftest.py).

Scenario: open a graph from the folder picker, click a node -> panels show its connections; pin two nodes (button
and Ctrl-click) -> the subgraph shows them; group them -> the supernode label appears; reload the URL -> the same
state; no browser console errors. Plus safety: corrupt file and bad ids give an error card, labels from a link
render as text, a bare URL shares no other tab's pins.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dash.testing.errors import TestingTimeoutError as DashTimeout
from dash.testing.wait import until
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tracer.cli import main
from tracer.graphfile import load_graph, save_graph
from tracer.layout import NodeKind
from tracer.models import DEFAULT_MODEL
from tracer.result import Attribution
from tracer.schema import GraphFile
from transcoders import DEFAULT_TRANSCODERS
from viewer.app import create_app
from viewer.figures import NODE_TRACE
from viewer.model import GraphView, connections, display_name
from viewer.state import parse_query

pytestmark = pytest.mark.browser
PROMPT = "The capital of France is"
ROOT = Path(__file__).resolve().parents[2]
XSS = "<img src=x onerror=alert(1)>"
TIMEOUT = 30

NODE_PIXEL = """const gd = document.querySelector('#main-graph .js-plotly-plot'), fl = gd._fullLayout;
const t = gd.data[arguments[0]], i = t.customdata.indexOf(arguments[1]), r = gd.getBoundingClientRect();
return [fl.xaxis.l2p(t.x[i]) + fl._size.l - r.width / 2, fl.yaxis.l2p(t.y[i]) + fl._size.t - r.height / 2];"""
CY_LABELS = (
    "const e = document.getElementById('subgraph'), c = e && e._cyreg;"  # null while a reloaded page mounts
    " return c ? c.cy.nodes().filter(n => !n.isChild()).map(n => n.data('label')) : [];"  # items, not members
)
AXES = """const r = id => { const l = document.querySelector('#' + id + ' .js-plotly-plot')._fullLayout;
return [l.xaxis.range, l.yaxis.range]; }; return [r('main-graph'), r('overlay-graph')];"""
PLOT_READY = "const g = document.querySelector('#main-graph .js-plotly-plot'); return !!(g && g.data && g.data.length);"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path: Path, graph: GraphFile, attribution: Attribution) -> Path:
    """A folder with `france.json` (a real trace of the default model once it is bundled, else synthetic) and a
    corrupt `broken.json`."""
    folder = tmp_path / "graphs"
    if DEFAULT_MODEL.exists() and DEFAULT_TRANSCODERS.exists():
        assert main(["trace", PROMPT, "-o", str(folder / "france.json")]) == 0
    else:
        save_graph(folder / "france.json", graph, attribution)
    (folder / "broken.json").write_text("{oops")
    return folder


def click_node(duo, view: GraphView, node_id: str, pin: bool = False) -> None:
    trace = NODE_TRACE[view.graph.nodes[view.row[node_id]].kind]
    dx, dy = duo.driver.execute_script(NODE_PIXEL, int(trace), node_id)
    plot = duo.find_element("#main-graph .js-plotly-plot")
    chain = ActionChains(duo.driver).move_to_element(plot).move_by_offset(round(dx), round(dy))
    (chain.key_down(Keys.CONTROL).click().key_up(Keys.CONTROL) if pin else chain.click()).perform()


def wait_js(duo, script: str, check: Callable[[Any], bool] = bool, *args):
    value = None

    def ok():
        nonlocal value
        value = duo.driver.execute_script(script, *args)
        return check(value)

    until(ok, timeout=TIMEOUT)
    return value


def pinned_texts(duo) -> list[str]:
    return [e.text for e in duo.find_elements("#pinned-list label")]


def test_scenario(dash_duo, served: Path):
    view = GraphView.build(load_graph(served / "france.json"))
    feats = [n for n in view.graph.nodes if n.kind is NodeKind.FEATURE]
    first = max(feats, key=lambda n: sum(len(c) for c in connections(view, n.id)))
    second = next(n for n in feats if n.id != first.id)
    dash_duo.start_server(create_app(served), port=free_port())

    # open a graph from the picker
    dash_duo.wait_for_text_to_equal("#picker h2", f"Graphs in {served.name}", timeout=TIMEOUT)
    dash_duo.driver.find_element(By.LINK_TEXT, "france.json").click()
    wait_js(dash_duo, PLOT_READY)
    dash_duo.wait_for_contains_text("#header", view.graph.metadata.prompt, timeout=TIMEOUT)

    # click a node -> detail and connections
    click_node(dash_duo, view, first.id)
    dash_duo.wait_for_text_to_equal("#detail h3", display_name(first), timeout=TIMEOUT)
    c = connections(view, first.id)
    rows = dash_duo.find_elements("#connections .node-link")
    assert [r.get_attribute("title") for r in rows] == [lk.node for group in c for lk in group]

    # pin two nodes: the Pin button, then a Ctrl-click on the graph
    dash_duo.find_element("#pin-button").click()
    dash_duo.wait_for_text_to_equal("#pin-button", "Unpin", timeout=TIMEOUT)
    click_node(dash_duo, view, second.id, pin=True)
    wait_js(dash_duo, CY_LABELS, lambda v: sorted(v) == sorted([display_name(first), display_name(second)]))
    assert parse_query(dash_duo.driver.current_url.split("/", 3)[3]).clicked == first.id

    # group them -> the supernode label appears
    for box in dash_duo.find_elements("#pinned-list input"):
        box.click()
    dash_duo.find_element("#label-input").send_keys("capital city")
    dash_duo.find_element("#group-button").click()
    wait_js(dash_duo, CY_LABELS, lambda v: v == ["capital city"])
    assert pinned_texts(dash_duo) == ["capital city (2 nodes)"]

    # exports: our JSON and the subgraph as a paper figure (dcc.Download), the panel as shown (generateImage)
    behavior = {"behavior": "allow", "downloadPath": dash_duo.download_path}  # headless=new needs it said
    dash_duo.driver.execute_cdp_cmd("Browser.setDownloadBehavior", behavior)
    downloads = Path(dash_duo.download_path)
    dash_duo.find_element("#export-json").click()
    until(lambda: (downloads / "france.json").exists(), timeout=TIMEOUT)
    dash_duo.find_element("#figure-kind input[value='subgraph']").click()
    dash_duo.find_element("#figure-svg").click()
    dash_duo.find_element("#export-png").click()
    until(lambda: {p.name for p in downloads.iterdir()} >= {"france.subgraph.svg", "subgraph.png"}, timeout=TIMEOUT)
    until(lambda: "capital city" in (downloads / "france.subgraph.svg").read_text(), timeout=TIMEOUT)
    exported = GraphFile.model_validate_json((downloads / "france.json").read_text())
    assert exported.view.supernodes[0].label == "capital city"

    # pan the graph: the overlay (edges, rings) follows the main axes
    before = dash_duo.driver.execute_script(AXES)[0]
    ActionChains(dash_duo.driver).drag_and_drop_by_offset(
        dash_duo.find_element("#main-graph .nsewdrag"), 80, 30
    ).perform()
    wait_js(dash_duo, AXES, lambda v: v[0] != before and v[0] == v[1])

    # reload the URL -> the same state
    url = dash_duo.driver.current_url
    state = parse_query("?" + url.split("?", 1)[1])
    assert state.pinned == (first.id, second.id) and state.supernodes[0].members == [first.id, second.id]
    dash_duo.driver.get(url)
    try:
        wait_js(dash_duo, CY_LABELS, lambda v: v == ["capital city"])
    except DashTimeout:  # known: under heavy CPU load the first render after a reload is sometimes dropped
        dash_duo.driver.get(url)  # (see the closing note of the viewer issue); a second load must restore it
        wait_js(dash_duo, CY_LABELS, lambda v: v == ["capital city"])
    dash_duo.wait_for_text_to_equal("#detail h3", display_name(first), timeout=TIMEOUT)
    assert pinned_texts(dash_duo) == ["capital city (2 nodes)"]
    assert dash_duo.get_logs() == []

    shot = ROOT / "artifacts" / "viewer.png"
    shot.parent.mkdir(exist_ok=True)
    dash_duo.driver.save_screenshot(str(shot))
    if os.environ.get("TRACER_UPDATE_DOCS_SCREENSHOT"):  # refresh the README's picture on purpose only
        from PIL import Image  # pillow comes with matplotlib

        (ROOT / "docs").mkdir(exist_ok=True)
        small = Image.open(shot).convert("RGB").quantize(colors=96)  # a palette PNG: a fraction of the size
        small.save(ROOT / "docs" / "viewer.png", optimize=True)


def test_safety(dash_duo, served: Path):
    view = GraphView.build(load_graph(served / "france.json"))
    node = next(n for n in view.graph.nodes if n.kind is NodeKind.FEATURE)
    dash_duo.start_server(create_app(served), port=free_port())
    base = dash_duo.server_url

    for query, message in (("?graph=broken.json", "not valid JSON"), ("?graph=../graphs/france.json", "invalid"),
                           ("?graph=%2Fetc%2Fpasswd", "invalid graph id")):  # fmt: skip
        dash_duo.driver.get(base + "/" + query)
        dash_duo.wait_for_contains_text(".error-card", message, timeout=TIMEOUT)
        assert not dash_duo.find_element("#graph-page").is_displayed()

    sources = dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('script[src], link[href]')].map(e => e.src || e.href);"
    )
    assert sources and all(s.startswith(base) for s in sources)  # every script and style from this server, no CDN

    clerps = f'[["{node.id}","{XSS}"]]'
    dash_duo.driver.get(f"{base}/?graph=france.json&clickedId={node.id}&pinnedIds={node.id}&clerps={clerps}")
    dash_duo.wait_for_text_to_equal("#detail h3", XSS, timeout=TIMEOUT)
    assert dash_duo.driver.find_elements(By.CSS_SELECTOR, "#graph-page img") == []
    assert pinned_texts(dash_duo) == [XSS]

    # a connection row selects its node; Escape clears the selection
    row = dash_duo.find_elements("#connections .node-link")[0]
    target = row.get_attribute("title")
    row.click()
    dash_duo.wait_for_text_to_equal("#detail h3", display_name(view.graph.nodes[view.row[target]]), timeout=TIMEOUT)
    dash_duo.find_element("body").send_keys(Keys.ESCAPE)
    dash_duo.wait_for_text_to_equal("#detail", "Click a node to see its details.", timeout=TIMEOUT)
    assert "clickedId" not in dash_duo.driver.current_url

    dash_duo.driver.get(f"{base}/?graph=france.json")  # another tab's pins are not shared through the server
    wait_js(dash_duo, PLOT_READY)
    dash_duo.wait_for_text_to_equal("#detail", "Click a node to see its details.", timeout=TIMEOUT)
    assert pinned_texts(dash_duo) == []
    assert dash_duo.get_logs() == []
