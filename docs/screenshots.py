"""Rebuild the README's viewer pictures from the bundled default model: one command, offline, headless Chromium.

    .venv/bin/python docs/screenshots.py

1. trace: "The capital of France is" with the default model and CLT (labels from the feature store when the trace
   writes them) into a temporary folder.
2. view state: the top logit clicked; pinned: it and the features with the strongest direct edges into it (and
   their strongest inputs), the two strongest features grouped into a labelled supernode.
3. shots (1600 x 1000 window): docs/viewer-graph.png (the labelled main graph), docs/viewer-subgraph.png (the
   subgraph panel with the supernode), both as palette PNGs; plus docs/figure-subgraph.svg from `tracer figure`.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "The capital of France is"
WINDOW = (1600, 1000)
N_PINNED = 6


def pick_view(graph_path: Path) -> tuple[str, list[str], list[str], str]:
    """2. (clicked logit, pinned ids, supernode members, supernode label)."""
    from tracer.graphfile import load_graph
    from tracer.layout import NodeKind

    g = load_graph(graph_path)
    logit = max((n for n in g.nodes if n.kind is NodeKind.LOGIT), key=lambda n: n.probability or 0.0)
    kind = {n.id: n.kind for n in g.nodes}
    into = sorted((e for e in g.edges if e.target == logit.id and kind[e.source] is NodeKind.FEATURE),
                  key=lambda e: -abs(e.weight))  # fmt: skip
    direct = [e.source for e in into[: N_PINNED // 2]]
    feeders = []
    for d in direct:
        ins = sorted((e for e in g.edges if e.target == d and kind[e.source] is NodeKind.FEATURE),
                     key=lambda e: -abs(e.weight))  # fmt: skip
        feeders += [e.source for e in ins[:1]]
    pinned = list(dict.fromkeys([logit.id, *direct, *feeders]))[: N_PINNED + 1]
    return logit.id, pinned, direct[:2], f"feed {(logit.token or '').strip()!r}"


def serve(folder: Path) -> str:
    from viewer.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(folder)
    threading.Thread(target=lambda: app.run(host="127.0.0.1", port=port), daemon=True).start()
    time.sleep(1.0)
    return f"http://127.0.0.1:{port}"


def shoot(url: str, out_graph: Path, out_sub: Path) -> None:
    """3. Screenshots of the main graph and of the subgraph panel."""
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = Options()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                 "--disable-background-networking", "--enable-unsafe-swiftshader",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}"):  # fmt: skip
        opts.add_argument(flag)
    opts.binary_location = shutil.which("chromium") or opts.binary_location
    d = webdriver.Chrome(options=opts)
    try:
        d.get(url)
        ready = ("const e = document.getElementById('subgraph'), c = e && e._cyreg;"
                 "const g = document.querySelector('#main-graph .textpoint text');"
                 "return !!(c && c.cy.nodes().length && g && document.querySelector('#detail h3'));")  # fmt: skip
        WebDriverWait(d, 120).until(lambda drv: drv.execute_script(ready))
        time.sleep(1.5)  # cytoscape's fit and plotly's last frame
        for el, out in ((d.find_element(By.CSS_SELECTOR, ".main-row"), out_graph),
                        (d.find_element(By.CSS_SELECTOR, ".subgraph-row"), out_sub)):  # fmt: skip
            d.execute_script("arguments[0].scrollIntoView();", el)
            time.sleep(0.5)
            raw = out.with_suffix(".raw.png")
            el.screenshot(str(raw))
            Image.open(raw).convert("RGB").quantize(colors=128).save(out, optimize=True)
            raw.unlink()
    finally:
        d.quit()


def main() -> int:
    from tracer.cli import main as tracer

    docs = ROOT / "docs"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        graph = folder / "france.json"
        if tracer(["trace", PROMPT, "-o", str(graph)]) != 0:  # 1.
            return 1
        clicked, pinned, group, label = pick_view(graph)  # 2.
        sup = json.dumps([[label, *group]], separators=(",", ":"))
        query = f"?graph=france.json&clickedId={clicked}&pinnedIds={','.join(pinned)}&supernodes={quote(sup)}"
        shoot(serve(folder) + "/" + query, docs / "viewer-graph.png", docs / "viewer-subgraph.png")  # 3.
        args = ["figure", str(graph), "-o", str(docs / "figure-subgraph.svg"), "--subgraph", "--pinned",
                ",".join(pinned), "--supernode", f"{label}={','.join(group)}", "--width", "9", "--height", "5"]
        if tracer(args) != 0:
            return 1
    print("wrote docs/viewer-graph.png, docs/viewer-subgraph.png, docs/figure-subgraph.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
