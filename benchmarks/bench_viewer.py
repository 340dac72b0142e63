"""Viewer benchmark: first render and click latency in headless Chromium on a synthetic 10k-node / 100k-edge graph.

1. build: a synthetic attribution with exactly --nodes nodes and --edges edges, every node kept, saved with its
   sidecar (server-side phases timed: build, save, load + index, full figure JSON).
2. serve: the viewer in a thread of this process, the graph preloaded (as `tracer view` runs it), on a free port.
3. first render: page navigation start -> all node traces present in the plotly graph (measured in the page with
   performance.now(), so polling adds nothing); --renders times, the first in a fresh browser (no cached scripts).
   Its breakdown (Resource Timing): scripts loaded, the view callback (server time, download of the figure JSON),
   and parse + draw after it — what dominates is printed.
4. click: a real mouse click on a node (its pixel position from plotly's axes) -> the URL, the overlay with its
   edges and the clicked ring, and the detail panel all updated, then two animation frames (drawn). The nodes are
   logits (the largest edge sets), errors and the most influential features.
Goals (issue 14): first render in a fresh browser <= 2.5 s, click <= 0.2 s (median). Prints a table; --out writes
JSON.

Run: .venv/bin/python benchmarks/bench_viewer.py [--nodes 10000 --edges 100000 --clicks 12 --out bench.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracer.graphfile import load_graph, save_graph  # noqa: E402
from tracer.layout import NodeKind  # noqa: E402
from viewer.app import create_app  # noqa: E402
from viewer.figures import (  # noqa: E402
    NODE_TRACE,
    NodeTrace,
    OverlayTrace,
    coordinates,
    main_figure,
    overlay,
    overlay_figure,  # noqa: E402
)
from viewer.ids import LinkType  # noqa: E402
from viewer.model import GraphView, display_name  # noqa: E402
from viewer.synthetic import synthetic_attribution, synthetic_graph  # noqa: E402

SCRIPT_TIMEOUT_S = 60
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
                "--enable-unsafe-swiftshader", "--window-size=1400,1100")  # fmt: skip
WAIT_RENDER = """const done = arguments[arguments.length - 1], n = arguments[0], tr = arguments[1];
(function check() {
    const g = document.querySelector('#main-graph .js-plotly-plot');
    const o = document.querySelector('#overlay-graph .js-plotly-plot');
    if (g && g.data && g.data.length > tr && g.data[tr].x.length === n && g._fullLayout && o && o._fullLayout) {
        requestAnimationFrame(() => requestAnimationFrame(() => done([performance.now(), phases()])));
    } else { setTimeout(check, 5); }
})();
function phases() {  // seconds from navigation start; the view callback is the largest update response
    const res = performance.getEntriesByType('resource');
    const end = (rs) => Math.max(0, ...rs.map(r => r.responseEnd)) / 1000;
    const posts = res.filter(r => r.name.includes('_dash-update-component'));
    const view = posts.reduce((a, b) => (!a || b.encodedBodySize > a.encodedBodySize ? b : a), null);
    return {scripts_loaded: end(res.filter(r => r.initiatorType === 'script')),
            view_request: view ? view.requestStart / 1000 : null,
            view_server: view ? (view.responseStart - view.requestStart) / 1000 : null,
            view_download: view ? (view.responseEnd - view.responseStart) / 1000 : null,
            view_done: view ? view.responseEnd / 1000 : null};
}"""
ARM_CLICK = """window.__t0 = null; document.addEventListener('mousedown', () => { window.__t0 = performance.now(); },
{capture: true, once: true});"""
WAIT_CLICK = """const done = arguments[arguments.length - 1], prev = arguments[0], ring = arguments[1];
const tEdge = arguments[2];
(function check() {
    const g = document.querySelector('#overlay-graph .js-plotly-plot'), h = document.querySelector('#detail h3');
    const id = new URLSearchParams(location.search).get('clickedId'), want = window.__nodes[id];
    let edges = 0;
    for (let i = 0; i < tEdge; i++) { edges += g.data[i].x.length / 3; }
    if (id && id !== prev && want && g.data[ring].x.length === 1 && Math.abs(g.data[ring].x[0] - want[0]) < 1e-9
        && h && h.textContent === want[1] && edges === want[2]) {
        requestAnimationFrame(() => requestAnimationFrame(() => done([window.__t0, performance.now(), id])));
    } else { setTimeout(check, 5); }
})();"""
NODE_PIXEL = """const gd = document.querySelector('#main-graph .js-plotly-plot'), fl = gd._fullLayout;
const t = gd.data[arguments[0]], i = t.customdata.indexOf(arguments[1]), r = gd.getBoundingClientRect();
return [fl.xaxis.l2p(t.x[i]) + fl._size.l - r.width / 2, fl.yaxis.l2p(t.y[i]) + fl._size.t - r.height / 2];"""


def build(folder: Path, n_nodes: int, n_edges: int, seed: int) -> tuple[Path, dict[str, float]]:
    """1. A graph with exactly n_nodes nodes and n_edges edges (features get 10 inputs, logits the rest)."""
    n_layers, n_pos, n_logits = 6, 16, 10
    n_features = n_nodes - n_layers * n_pos - n_pos - n_logits
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    a = synthetic_attribution(n_layers, n_pos, n_features, n_logits, 10, n_edges=n_edges, seed=seed)
    graph = synthetic_graph(a, all_nodes=True)
    t["build_graph_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    path = save_graph(folder / "bench.json", graph, a)
    t["save_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    view = GraphView.build(load_graph(path))
    co = coordinates(view)
    t["load_and_index_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fig = main_figure(view, co, {}, "r")
    over = overlay_figure(view, co, overlay(view, co, None, [], [], LinkType.BOTH))
    from plotly.io.json import to_json_plotly

    t["figure_json_mb"] = (len(to_json_plotly(fig) or "") + len(to_json_plotly(over) or "")) / 1e6
    t["figure_s"] = time.perf_counter() - t0
    assert len(graph.nodes) == n_nodes and len(graph.edges) == n_edges, (len(graph.nodes), len(graph.edges))
    return path, t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def driver() -> webdriver.Chrome:
    opts = Options()
    for f in CHROME_FLAGS:
        opts.add_argument(f)
    opts.binary_location = shutil.which("chromium") or opts.binary_location
    d = webdriver.Chrome(options=opts)
    d.set_script_timeout(SCRIPT_TIMEOUT_S)
    return d


def first_render(d: webdriver.Chrome, url: str, n_features: int) -> tuple[float, dict[str, float]]:
    """3. Seconds from navigation start to the drawn graph, and its phases."""
    d.get(url)
    t, phases = d.execute_async_script(WAIT_RENDER, n_features, int(NodeTrace.FEATURE))
    total = t / 1000
    phases["draw_after_view"] = total - (phases["view_done"] or 0.0)
    return total, phases


def dominant(p: dict[str, float]) -> str:
    """The longest of: loading scripts, waiting for the view callback (page start-up), its server time, the
    figure's download, and parse + draw."""
    if p.get("view_done") is None:
        return "unknown"
    spans = {"loading scripts": p["scripts_loaded"],
             "page start-up before the view callback": p["view_request"] - p["scripts_loaded"],
             "view callback on the server": p["view_server"], "figure download": p["view_download"],
             "JSON parse + WebGL draw": p["draw_after_view"]}  # fmt: skip
    return max(spans, key=lambda k: spans[k]) + " (" + ", ".join(f"{k} {v:.2f}" for k, v in spans.items()) + ")"


def expectations(view: GraphView, co) -> dict[str, list]:
    """Node id -> (x, detail title, number of drawn edges): what a finished click on it shows."""
    n_edges = np.diff(view.in_csr[0]) + np.diff(view.out_csr[0])
    return {n.id: [float(co.x[i]), display_name(n), int(n_edges[i])] for i, n in enumerate(view.graph.nodes)}


def click_latency(d: webdriver.Chrome, view: GraphView, node_id: str, prev: str | None) -> tuple[str, float]:
    """4. (node actually clicked, seconds from mousedown to the updated and drawn view)."""
    node = view.node(node_id)
    assert node is not None
    dx, dy = d.execute_script(NODE_PIXEL, int(NODE_TRACE[node.kind]), node_id)
    d.execute_script(ARM_CLICK)
    plot = d.find_element(By.CSS_SELECTOR, "#main-graph .js-plotly-plot")
    ActionChains(d).move_to_element(plot).move_by_offset(round(dx), round(dy)).click().perform()
    t0, t1, hit = d.execute_async_script(WAIT_CLICK, prev, int(OverlayTrace.CLICKED), int(OverlayTrace.PINNED))
    return hit, (t1 - t0) / 1000


def pick_nodes(view: GraphView, n: int, seed: int) -> list[str]:
    """Features, errors and logits, spread out so neighbouring markers do not steal the click."""
    g = torch.Generator().manual_seed(seed)
    logits = [x.id for x in view.graph.nodes if x.kind is NodeKind.LOGIT][:2]
    errors = [x.id for x in view.graph.nodes if x.kind is NodeKind.ERROR]
    feats = [x.id for x in view.graph.nodes if x.kind is NodeKind.FEATURE and x.influence > 0]
    big = sorted(feats, key=lambda f: -view.graph.nodes[view.row[f]].influence)[: max(1, n // 2)]
    rest = [errors[int(i)] for i in torch.randint(len(errors), (2,), generator=g)]
    return (logits + rest + big)[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--nodes", type=int, default=10_000, help="nodes in the graph")
    p.add_argument("--edges", type=int, default=100_000, help="edges in the graph")
    p.add_argument("--renders", type=int, default=3, help="page loads (the first in a fresh browser)")
    p.add_argument("--clicks", type=int, default=12, help="nodes clicked")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path, server = build(Path(tmp), args.nodes, args.edges, args.seed)  # 1.
        view = GraphView.build(load_graph(path))
        n_features = int((view.kind == NodeKind.FEATURE.code).sum())
        t0 = time.perf_counter()
        app, port = create_app(path, preload=True), free_port()  # 2. as `tracer view` does
        server["preload_s"] = time.perf_counter() - t0
        threading.Thread(target=lambda: app.run(host="127.0.0.1", port=port), daemon=True).start()
        time.sleep(1.0)
        d = driver()
        try:
            url = f"http://127.0.0.1:{port}/"
            timed = [first_render(d, url, n_features) for _ in range(args.renders)]  # 3.
            renders, breakdown = [t for t, _ in timed], timed[0][1]
            d.get(url)
            d.execute_async_script(WAIT_RENDER, n_features, int(NodeTrace.FEATURE))
            d.execute_script("window.__nodes = arguments[0];", expectations(view, coordinates(view)))
            clicks, prev = {}, None
            for nid in pick_nodes(view, args.clicks, args.seed):  # 4.
                try:
                    prev, clicks[nid] = click_latency(d, view, nid, prev)
                except TimeoutException:
                    print(f"note: clicking {nid} selected nothing within {SCRIPT_TIMEOUT_S} s", file=sys.stderr)
                    continue
                if prev != nid:
                    print(f"note: clicking {nid} hit the neighbouring {prev}", file=sys.stderr)
            heap = d.execute_script("return performance.memory ? performance.memory.usedJSHeapSize : null")
        finally:
            d.quit()
    lat = list(clicks.values())
    result = {
        "nodes": args.nodes, "edges": args.edges, "server": server, "first_render_first_visit_s": renders[0],
        "first_render_repeat_s": statistics.median(renders[1:]) if len(renders) > 1 else None,
        "click_median_s": statistics.median(lat), "click_max_s": max(lat), "clicks": clicks,
        "js_heap_mb": heap / 1e6 if heap else None, "goals": {"first_render_s": 2.5, "click_s": 0.2},
        "first_visit_phases_s": breakdown, "dominant": dominant(breakdown),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
    }  # fmt: skip
    rows = [("graph", f"{args.nodes:,} nodes / {args.edges:,} edges"),
            *((k, f"{v:.2f}") for k, v in server.items()),
            ("first render, first visit (s)", f"{renders[0]:.2f}"),
            ("first render, repeat visit (s, median)", f"{result['first_render_repeat_s'] or float('nan'):.2f}"),
            ("click -> drawn (s, median)", f"{result['click_median_s']:.3f}"),
            ("click -> drawn (s, max)", f"{result['click_max_s']:.3f}"),
            ("JS heap (MB)", f"{result['js_heap_mb'] or float('nan'):.0f}"),
            *((f"first visit: {k} (s)", f"{v:.2f}") for k, v in breakdown.items() if v is not None),
            ("first visit: dominated by", result["dominant"])]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
