"""Rebuild the README's pictures from the bundled default model and CLT: one command, offline, headless Chromium.

    .venv/bin/python docs/screenshots.py [--out DIR]            # every picture, then DIR/provenance.json
    .venv/bin/python docs/screenshots.py --provenance-only      # provenance.json for the pictures already in DIR

1. trace: "The capital of France is" with the default model and CLT (labels from the feature store when the trace
   writes them) into a temporary folder.
2. view state: the top logit clicked; pinned: it and the features with the strongest direct edges into it (and
   their strongest inputs), the two strongest features grouped into a labelled supernode; the panel feature: the
   graph's most influential feature.
3. shots (1600 x 1000 window, viewer with the bundled feature store): viewer-graph.png (the labelled main graph),
   viewer-subgraph.png (the subgraph panel with the supernode), then the panel feature clicked: feature_panel.png
   (its detail panel down to the end of the top activations), all palette PNGs; plus figure-subgraph.svg from
   `tracer figure`.
4. provenance: DIR/provenance.json holds the default model's and CLT's content hashes and each picture's sha256,
   so tests/docs/test_docs_provenance.py fails when the assets change and the pictures are not rebuilt.
DIR defaults to docs/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "The capital of France is"
WINDOW = (1600, 1000)
N_PINNED = 6
PICTURES = ("viewer-graph.png", "viewer-subgraph.png", "feature_panel.png", "figure-subgraph.svg")
PROVENANCE = "provenance.json"


class View(NamedTuple):
    """2. What the shots show (node ids of the traced graph)."""

    clicked: str
    pinned: list[str]
    group: list[str]
    label: str
    feature: str


def pick_view(graph_path: Path) -> View:
    """2. The clicked logit, the pinned nodes, the supernode and the panel feature."""
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
    feature = max((n for n in g.nodes if n.kind is NodeKind.FEATURE), key=lambda n: n.influence)
    return View(clicked=logit.id, pinned=pinned, group=direct[:2], label=f"feed {(logit.token or '').strip()!r}",
                feature=feature.id)  # fmt: skip


def serve(folder: Path) -> str:
    from viewer.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(folder, find_features=True)  # the feature panel needs the bundled store
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns the trace's output
    threading.Thread(target=lambda: app.run(host="127.0.0.1", port=port), daemon=True).start()
    time.sleep(1.0)
    return f"http://127.0.0.1:{port}"


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options

    opts = Options()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                 "--disable-background-networking", "--enable-unsafe-swiftshader",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}"):  # fmt: skip
        opts.add_argument(flag)
    opts.binary_location = shutil.which("chromium") or opts.binary_location  # Debian's, never a downloaded one
    return webdriver.Chrome(options=opts)


def save_palette_png(element, out: Path, keep: float | None = None) -> None:
    """An element's screenshot as a palette PNG (a fraction of the RGB size); keep: the share of its height kept."""
    from PIL import Image

    raw = out.with_suffix(".raw.png")
    element.screenshot(str(raw))
    img = Image.open(raw).convert("RGB")
    if keep is not None and keep < 1.0:
        img = img.crop((0, 0, img.width, round(img.height * keep)))
    img.quantize(colors=128).save(out, optimize=True)
    raw.unlink()


def wait_for(d, script: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(d, 120).until(lambda drv: drv.execute_script(script))
    time.sleep(1.5)  # cytoscape's fit and plotly's last frame


def shoot_graphs(d, url: str, out: Path) -> None:
    """3. The main graph and the subgraph panel."""
    from selenium.webdriver.common.by import By

    d.get(url)
    wait_for(d, "const e = document.getElementById('subgraph'), c = e && e._cyreg;"
                "const g = document.querySelector('#main-graph .textpoint text');"
                "return !!(c && c.cy.nodes().length && g && document.querySelector('#detail h3'));")  # fmt: skip
    for css, name in ((".main-row", "viewer-graph.png"), (".subgraph-row", "viewer-subgraph.png")):
        el = d.find_element(By.CSS_SELECTOR, css)
        d.execute_script("arguments[0].scrollIntoView();", el)
        time.sleep(0.5)
        save_palette_png(el, out / name)


# the share of the panel above the band after the top activations (the sampled lower quantiles make the picture
# long and say little); 1 when there is none
CUT_AFTER_TOP_BAND = """const p = arguments[0], hs = [...p.querySelectorAll('h5')], r = p.getBoundingClientRect();
const i = hs.findIndex(h => h.textContent === arguments[1]), next = i >= 0 ? hs[i + 1] : null;
return next ? (next.getBoundingClientRect().top - r.top) / r.height : 1;"""


def shoot_panel(d, url: str, out: Path) -> None:
    """3. The clicked feature's detail panel down to the end of its top activations: the side column's scroll limit
    lifted and the window made tall enough (an element screenshot is cut at the window's edge)."""
    from selenium.webdriver.common.by import By

    from tracer.errors import ConfigError
    from viewer.feature_panel import BAND_TITLES

    d.get(url)
    wait_for(d, "const p = document.querySelector('#detail'), h = p && p.querySelector('.feature-histogram');"
                "return !!(p && p.querySelector('h3') && (!h || h.querySelector('.main-svg')));")  # fmt: skip
    if not d.find_elements(By.CSS_SELECTOR, "#detail .example"):
        raise ConfigError("the viewer found no feature store for the default CLT "
                          "(rebuild it: python -m tracer.bundle features)")  # fmt: skip
    d.execute_script("document.querySelector('.side').style.maxHeight = 'none';")
    panel = d.find_element(By.CSS_SELECTOR, "#detail")
    bottom = d.execute_script("return arguments[0].getBoundingClientRect().bottom;", panel)
    d.set_window_size(WINDOW[0], max(WINDOW[1], int(bottom) + 200))
    time.sleep(0.5)
    save_palette_png(panel, out / "feature_panel.png", d.execute_script(CUT_AFTER_TOP_BAND, panel, BAND_TITLES["top"]))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_provenance(out: Path) -> Path:
    """4. out/provenance.json for the pictures in `out` (all of PICTURES must be there)."""
    from tracer.errors import ConfigError
    from tracer.features.cli import transcoders_hash
    from tracer.io import atomic_write_text
    from tracer.models import load_model
    from transcoders import DEFAULT_TRANSCODERS

    missing = [name for name in PICTURES if not (out / name).is_file()]
    if missing:
        raise ConfigError(f"{out} lacks {', '.join(missing)} (run docs/screenshots.py without --provenance-only)")
    record = {"model_hash": load_model().content_hash, "transcoders_hash": transcoders_hash(DEFAULT_TRANSCODERS),
              "files": {name: sha256(out / name) for name in PICTURES}}  # fmt: skip
    return atomic_write_text(out / PROVENANCE, json.dumps(record, indent=2) + "\n")


def build(out: Path) -> int:
    """Steps 1-3 into `out`."""
    from tracer.cli import main as tracer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        graph = folder / "france.json"
        if tracer(["trace", PROMPT, "-o", str(graph)]) != 0:  # 1.
            return 1
        v = pick_view(graph)  # 2.
        sup = json.dumps([[v.label, *v.group]], separators=(",", ":"))
        query = f"?graph=france.json&clickedId={v.clicked}&pinnedIds={','.join(v.pinned)}&supernodes={quote(sup)}"
        url = serve(folder)
        d = browser()  # 3.
        try:
            shoot_graphs(d, f"{url}/{query}", out)
            shoot_panel(d, f"{url}/?graph=france.json&clickedId={v.feature}", out)
        finally:
            d.quit()
        args = ["figure", str(graph), "-o", str(out / "figure-subgraph.svg"), "--subgraph", "--pinned",
                ",".join(v.pinned), "--supernode", f"{v.label}={','.join(v.group)}",
                "--width", "9", "--height", "5"]  # fmt: skip
        return tracer(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild the README's pictures and docs/provenance.json.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the pictures (default: docs/)")
    parser.add_argument("--provenance-only", action="store_true",
                        help="only (re)write provenance.json for the pictures already in --out")  # fmt: skip
    args = parser.parse_args(argv)
    from tracer.errors import TracerError
    from tracer.io import check_output_dir

    try:
        out: Path = check_output_dir(args.out, "--out").resolve()
        if not args.provenance_only:
            out.mkdir(parents=True, exist_ok=True)
        if not args.provenance_only and build(out) != 0:
            return 2  # the trace or figure command printed its error
        path = write_provenance(out)  # 4.
    except TracerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = [] if args.provenance_only else [out / name for name in PICTURES]
    print("wrote", ", ".join(str(p) for p in [*written, path]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
