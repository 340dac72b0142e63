"""Browser test of the feature dashboard (issue #16): a real trace of "The capital of France is" on the default
model, served as `tracer view` serves it (the feature store found beside the bundled transcoders); selecting the
most influential labelled feature at the ' France' position shows, in the detail panel, its label as the store
has it, its top-activating contexts and its logit-lens bars.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from tests.viewer.test_browser import PLOT_READY, PROMPT, TIMEOUT, free_port, wait_js
from tracer.cli import main
from tracer.features import open_store, store_path
from tracer.graphfile import load_graph
from tracer.layout import NodeKind
from tracer.models import DEFAULT_MODEL
from transcoders import DEFAULT_TRANSCODERS
from viewer.app import create_app
from viewer.model import display_name

pytestmark = pytest.mark.browser
STORE = store_path(DEFAULT_TRANSCODERS)
SUBJECT = "France"
TEXTS = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent);"
SHADES = "return [...document.querySelector('#detail .example').children].map(s => s.title);"
BAR_WIDTHS = "return [...document.querySelectorAll('#detail .bar-list .bar')].map(b => b.offsetWidth);"


@pytest.mark.skipif(not (DEFAULT_MODEL.exists() and STORE.is_file()), reason="no bundled model or feature store")
def test_feature_dashboard(dash_duo, tmp_path: Path):
    graph_file = tmp_path / "france.json"
    assert main(["trace", PROMPT, "-o", str(graph_file)]) == 0
    graph = load_graph(graph_file)
    tokens = graph.metadata.tokens
    at = [i for i, t in enumerate(tokens) if t.strip() == SUBJECT]
    assert at, tokens
    feats = sorted((n for n in graph.nodes if n.kind is NodeKind.FEATURE), key=lambda n: -n.influence)
    db = open_store(STORE)  # the store's read API, independent of the viewer's
    infos = {n.id: db.describe(n.layer, n.feature or 0) for n in feats}
    db.close()
    labelled = [n for n in feats if infos[n.id].label]
    node = next((n for n in labelled if n.pos in at), labelled[0] if labelled else None)
    assert node is not None, "no feature of the graph has a label in the store"
    info = infos[node.id]
    assert info.contexts and info.top_logits

    # serve the single file as `tracer view FILE` does: the store is discovered, not passed in
    dash_duo.start_server(create_app(graph_file, preload=True, find_features=True), port=free_port())
    dash_duo.driver.get(f"{dash_duo.server_url}/?clickedId={node.id}")
    wait_js(dash_duo, PLOT_READY)
    dash_duo.wait_for_text_to_equal("#detail h3", display_name(node), timeout=TIMEOUT)

    dash_duo.wait_for_contains_text("#detail .feature-label", info.label, timeout=TIMEOUT)
    examples = cast(list[str], wait_js(dash_duo, TEXTS, bool, "#detail .example"))
    top = info.contexts[0]
    assert "".join(top.tokens).replace("\n", "↵") == examples[0]  # the strongest context, token for token
    shaded = dash_duo.driver.execute_script(SHADES)
    assert shaded == [f"{a:.3g}" for a in top.acts]  # each token carries its activation
    bars = cast(list[str], wait_js(dash_duo, TEXTS, bool, "#detail .bar-list"))
    assert info.top_logits[0][0] in bars[0]  # logit lens: the top output token, then the bottom one
    assert not info.bottom_logits or info.bottom_logits[0][0] in bars[1]
    widths = dash_duo.driver.execute_script(BAR_WIDTHS)
    assert widths and max(widths) > 0  # the bars are drawn
    assert dash_duo.get_logs() == []
