"""Viewer fixtures: small synthetic graph files (with sidecars) and the Chrome flags for browser tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium.webdriver.chrome.options import Options

from tracer.graphfile import save_graph
from tracer.result import Attribution
from tracer.schema import GraphFile
from viewer.callbacks import Env
from viewer.data import GraphStore
from viewer.synthetic import synthetic_attribution, synthetic_graph

CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
                "--enable-unsafe-swiftshader", "--window-size=1400,1300")  # fmt: skip


def pytest_setup_options():
    """dash[testing] hook: headless Debian chromium (chromium-driver), never a downloaded browser."""
    options = Options()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    chromium = shutil.which("chromium")
    if chromium:
        options.binary_location = chromium
    return options


@pytest.fixture(scope="session")
def attribution() -> Attribution:
    return synthetic_attribution(n_layers=3, n_pos=5, n_features=24, n_logits=3, seed=0)


@pytest.fixture(scope="session")
def graph(attribution: Attribution) -> GraphFile:
    return synthetic_graph(attribution, node_threshold=0.95, edge_threshold=0.99)


@pytest.fixture
def graph_dir(tmp_path: Path, graph: GraphFile, attribution: Attribution) -> Path:
    """A served folder holding `small.json` (+ sidecar)."""
    save_graph(tmp_path / "small.json", graph, attribution)
    return tmp_path


@pytest.fixture
def env(graph_dir: Path) -> Env:
    return Env(GraphStore(graph_dir))
