"""The viewer's Intervene panel at callback level: a default-model graph, pinned features and a supernode, checked
against tracer.interventions run directly; graphs of other models are refused with a message."""

from __future__ import annotations

import re

import pytest
import torch

from tests.tracer.graph_fixtures import random_attribution
from tracer.cli import main
from tracer.graphfile import build_graph_file, load_graph, save_graph
from tracer.interventions import FeatureRef, Intervention, intervene
from tracer.layout import NodeKind
from tracer.prune import prune
from tracer.schema import Identity, Supernode
from viewer.app import create_app
from viewer.data import GraphStore
from viewer.handlers import Env
from viewer.ids import Id
from viewer.intervene import MODELS, handle_intervene
from viewer.state import GROUP_PREFIX, UrlState, to_query


def text_of(component) -> str:
    """All strings inside a Dash component tree."""
    if isinstance(component, str | int | float):
        return str(component)
    if isinstance(component, list | tuple):
        return " ".join(text_of(c) for c in component)
    children = getattr(component, "children", None)
    return "" if children is None else text_of(children)


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("intervene")
    assert main(["trace", "The opposite of hot is", "-o", str(d / "hot.json"), "--json", "--threads", "1"]) == 0
    return d


def ref(node) -> FeatureRef:
    assert node.feature is not None
    return FeatureRef(node.layer, node.feature, node.pos)


def feature_nodes(path, n):
    g = load_graph(path)
    feats = [x for x in g.nodes if x.kind is NodeKind.FEATURE]
    return sorted(feats, key=lambda x: -x.influence)[:n]


def test_ablating_pinned_features_matches_direct_intervention(graph_dir):
    nodes = feature_nodes(graph_dir / "hot.json", 3)
    search = "?" + to_query(UrlState(graph="hot.json", pinned=tuple(n.id for n in nodes)))
    out = text_of(handle_intervene(Env(GraphStore(graph_dir)), search, [], "ablate", None))
    lm, tc, _ = MODELS.get()
    meta = load_graph(graph_dir / "hot.json").metadata
    refs = [ref(n) for n in nodes]
    res = intervene(lm.model, tc, torch.tensor(meta.token_ids), [Intervention.ablate(*refs)])
    for tok, p in res.top(5):
        assert f"{lm.tokenizer.token_str(tok)!r} {p:.3f}" in out
    top_before = res.top(1, after=False)[0]
    assert f"{lm.tokenizer.token_str(top_before[0])!r} {top_before[1]:.3f}" in out
    assert "ablate 3 feature(s)" in out and "plain:" in out and "steered:" in out
    seconds = float(re.findall(r"([0-9.]+) s\b", out)[-1])
    assert seconds < 30  # loose: the 1 s goal is for an idle machine; this only catches a runaway


def test_scaling_a_checked_supernode_and_scale_one_is_a_no_op(graph_dir):
    nodes = feature_nodes(graph_dir / "hot.json", 4)
    st = UrlState(graph="hot.json", pinned=tuple(n.id for n in nodes),
                  supernodes=(Supernode(label="grp", members=[nodes[0].id, nodes[1].id]),))  # fmt: skip
    env = Env(GraphStore(graph_dir))
    out = text_of(handle_intervene(env, "?" + to_query(st), [GROUP_PREFIX + "0"], "scale", 1.0))
    assert "scale ×1 2 feature(s)" in out
    before, after = re.findall(r"p ([0-9.]+) -> ([0-9.]+)", out)[0]
    assert before == after
    plain, steered = re.findall(r"plain: (.*?) steered: (.*?) [0-9.]+ s", out)[0]
    assert plain == steered


def test_messages_instead_of_errors(graph_dir, tmp_path):
    env = Env(GraphStore(graph_dir))
    assert "Pin (or check)" in text_of(handle_intervene(env, "?graph=hot.json", [], "ablate", None))
    node = feature_nodes(graph_dir / "hot.json", 1)[0]
    search = "?" + to_query(UrlState(graph="hot.json", pinned=(node.id,)))
    assert "number" in text_of(handle_intervene(env, search, [], "scale", None))
    attr = random_attribution(n_layers=3, n_pos=6, seed=4)
    ident = Identity(name="other", content_hash="0123456789abcdef", kind="clt")
    save_graph(tmp_path / "o.json", build_graph_file(attr, prune(attr), prompt="x", model=ident, transcoders=ident,
                                                     settings={}), attr)  # fmt: skip
    fid = next(n.id for n in load_graph(tmp_path / "o.json").nodes if n.kind is NodeKind.FEATURE)
    msg = text_of(handle_intervene(Env(GraphStore(tmp_path)), "?" + to_query(UrlState(graph="o.json", pinned=(fid,))),
                                   [], "ablate", None))  # fmt: skip
    assert "traced with other" in msg


def test_callback_is_registered(graph_dir):
    app = create_app(graph_dir)
    assert any(Id.INTERVENE_OUT.value in key for key in app.callback_map)


def test_detail_panel_shows_target_effects(graph_dir):
    from viewer.layout import detail_panel
    from viewer.model import GraphView

    g = load_graph(graph_dir / "hot.json")
    node = feature_nodes(graph_dir / "hot.json", 1)[0]
    out = text_of(detail_panel(node, GraphView.build(g), {}))
    assert g.metadata.effects_target == " cold"
    assert f"signed effect on ' cold' {node.signed_effect:+.4g}" in out
    assert f"influence on ' cold' {node.target_influence:.4g}" in out


def test_scaling_up_moves_the_target_as_predicted(graph_dir):
    """Scale ×5: the top features (positive signed effect on ' cold') raise its demeaned logit, as
    tracer.interventions run directly says; a last-layer feature alone moves it by exactly (5 - 1)·signed effect
    (linear there); the steered continuation is the real model's with the features scaled (tracer.steering, free
    mode)."""
    from tracer.interventions import Mode
    from tracer.steering import GenerateConfig, generate

    nodes = feature_nodes(graph_dir / "hot.json", 3)
    assert all(n.signed_effect is not None and n.signed_effect > 0 for n in nodes)
    env = Env(GraphStore(graph_dir))
    out = text_of(handle_intervene(env, "?" + to_query(UrlState(graph="hot.json", pinned=tuple(n.id for n in nodes))),
                                   [], "scale", 5.0))  # fmt: skip
    lm, tc, _ = MODELS.get()
    ids = load_graph(graph_dir / "hot.json").metadata.token_ids
    ivs = [Intervention.scale(5.0, *(ref(n) for n in nodes))]
    res = intervene(lm.model, tc, torch.tensor(ids), ivs)
    name = lm.tokenizer.token_str
    for tok, p in res.top(5):
        assert f"{name(tok)!r} {p:.3f}" in out
    cold = lm.tokenizer.encode(" cold")[0]
    p0, p1 = (float(x[-1].double().softmax(-1)[cold]) for x in (res.logits_before, res.logits_after))
    assert f"' cold': p {p0:.3f} -> {p1:.3f}, demeaned logit change {res.logit_change(cold):+.3f}" in out
    # the predicted direction is the demeaned logit's (its probability may still fall: others rise more)
    assert res.logit_change(cold) > 1
    plain = generate(lm.model, tc, ids, [], GenerateConfig(n_tokens=5, mode=Mode.FREE))
    steered = generate(lm.model, tc, ids, ivs, GenerateConfig(n_tokens=5, mode=Mode.FREE))
    assert f"steered:  {lm.tokenizer.decode(steered)} " in out and steered != plain
    last = max((n for n in load_graph(graph_dir / "hot.json").nodes if n.kind is NodeKind.FEATURE and n.layer == 3),
               key=lambda n: n.influence)  # fmt: skip
    out = text_of(handle_intervene(env, "?" + to_query(UrlState(graph="hot.json", pinned=(last.id,))), [], "scale",
                                   5.0))  # fmt: skip
    assert last.signed_effect is not None
    change = float(re.findall(r"demeaned logit change ([-+][0-9.]+)", out)[0])
    assert change == pytest.approx(4 * last.signed_effect, abs=2e-3) and change != 0
