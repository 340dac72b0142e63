"""Signed total effect and target influence against dense solves, and the signed effect against the derivative of
the replacement model (a tiny fp64 model, a small scaling of each feature in replacement mode)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import random_model, tiny_config
from tests.tracer.graph_fixtures import random_attribution
from tests.tracer.test_attribution import CFG, TOKENS, random_transcoder
from tracer.attribute import attribute
from tracer.cli import main
from tracer.effects import activation_scale, effects, signed_total_effect
from tracer.graphfile import build_graph_file, load_graph, save_graph
from tracer.interventions import FeatureRef, Intervention, Mode, intervene
from tracer.models import HookPoint
from tracer.prune import prune
from tracer.record import record
from tracer.schema import SCHEMA_VERSION, Identity, node_id
from transcoders import ActivationKind, TranscoderKind


@pytest.mark.parametrize("seed", [0, 3])
def test_signed_effect_and_target_influence_equal_dense_solves(seed):
    attr = random_attribution(n_layers=3, n_pos=5, density=0.6, seed=seed, dtype=torch.float64)
    lay = attr.layout
    A = attr.adjacency.to_dense().double()
    n = lay.n_nodes
    eff = effects(attr)
    e = torch.zeros(n, dtype=torch.float64)
    e[eff.target_row] = 1.0
    D = torch.diag(activation_scale(lay, attr.activations))
    eye = torch.eye(n, dtype=torch.float64)
    want = torch.linalg.solve((eye - A @ D).T, e) @ A  # e^T (I - A D)^-1 A
    want[eff.target_row] = 0.0
    torch.testing.assert_close(eff.signed_effect, want, atol=1e-10, rtol=1e-10)
    ahat = A.abs() / A.abs().sum(1, keepdim=True).clamp_min(1e-10)
    infl = torch.linalg.solve((eye - ahat).T, e) - e  # e^T ((I - Â)^-1 - I)
    torch.testing.assert_close(eff.target_influence, infl, atol=1e-10, rtol=1e-10)
    assert (eff.signed_effect != 0).sum() > 10 and (eff.signed_effect < 0).any()


@pytest.mark.parametrize(("style", "kind", "activation"), [
    ("gpt2", TranscoderKind.CLT, ActivationKind.RELU),
    ("llama", TranscoderKind.PLT, ActivationKind.JUMPRELU),
])  # fmt: skip
def test_signed_effect_is_the_replacement_models_derivative(style, kind, activation):
    model = random_model(tiny_config(style))
    tc = random_transcoder(model, kind, HookPoint.MLP_IN, True, activation)
    attr = attribute(model, tc, TOKENS, None, CFG)
    eff = effects(attr)
    rec = record(model, tc, TOKENS)
    target = int(attr.layout.logit_tokens[0])
    eps = 1e-6
    f = attr.layout.features
    for i in range(len(f)):
        layer, pos, idx = f[i].tolist()
        iv = Intervention.scale(1 - eps, FeatureRef(layer, idx, pos))
        measured = intervene(model, tc, TOKENS, [iv], Mode.REPLACEMENT, rec).logit_change(target) / eps
        predicted = -float(eff.signed_effect[attr.layout.feature_rows(torch.tensor(i))])
        assert measured == pytest.approx(predicted, abs=1e-4 * (1 + abs(predicted)))
    # a group (supernode) across layers: paths through its own members are cut
    group = torch.tensor([0, len(f) // 2, len(f) - 1])
    rows = attr.layout.feature_rows(group)
    held = torch.zeros(attr.layout.n_nodes, dtype=torch.bool)
    held[rows] = True
    t_held = signed_total_effect(attr.adjacency, attr.layout, attr.activations, eff.target_row, held)
    refs = [FeatureRef(int(f[i, 0]), int(f[i, 2]), int(f[i, 1])) for i in group]
    acts = attr.activations[group].tolist()
    fixed = [Intervention.set((1 - eps) * a, r) for a, r in zip(acts, refs, strict=True)]  # members held
    measured = intervene(model, tc, TOKENS, fixed, Mode.REPLACEMENT, rec).logit_change(target) / eps
    predicted = -float(t_held[rows].sum())
    assert measured == pytest.approx(predicted, abs=1e-4 * (1 + abs(predicted)))
    # scaling multiplies each member's current activation, which still responds to the other members
    scaled = intervene(model, tc, TOKENS, [Intervention.scale(1 - eps, *refs)], Mode.REPLACEMENT, rec)
    unheld = -float(eff.signed_effect[rows].sum())
    assert scaled.logit_change(target) / eps == pytest.approx(unheld, abs=1e-4 * (1 + abs(unheld)))
    assert predicted != pytest.approx(unheld, abs=1e-6)  # cutting paths matters


def test_graph_file_stores_effects_and_migrates_v2(tmp_path):
    attr = random_attribution(n_layers=3, n_pos=5, density=0.6, seed=1, dtype=torch.float64)
    ident = Identity(name="tiny", content_hash="0", kind="")
    eff = effects(attr)
    g = build_graph_file(attr, prune(attr), prompt="p", model=ident, transcoders=ident, settings={})
    path = save_graph(tmp_path / "g.json", g, attr)
    back = load_graph(path)
    assert back.schema_version == SCHEMA_VERSION == 3 and back.metadata.effects_target == attr.logit_strs[0]
    by_id = {n.id: n for n in back.nodes}
    for row in prune(attr).node_mask.nonzero().flatten().tolist():
        n = by_id[node_id(attr.layout.node(row))]
        assert n.signed_effect == pytest.approx(float(eff.signed_effect[row]), abs=1e-12)
        assert n.target_influence == pytest.approx(float(eff.target_influence[row]), abs=1e-12)
    old = json.loads(path.read_text())
    old["schema_version"] = 2
    for n in old["nodes"]:
        del n["signed_effect"], n["target_influence"]
    del old["metadata"]["effects_target"]
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps(old))
    migrated = load_graph(v2)
    assert migrated.schema_version == 3 and all(n.signed_effect is None for n in migrated.nodes)


@pytest.mark.parametrize("rank_by", ["target-influence", "signed-effect"])
def test_prune_rank_by(rank_by, tmp_path, capsys):
    attr = random_attribution(n_layers=3, n_pos=6, density=0.5, seed=2, dtype=torch.float64)
    ident = Identity(name="tiny", content_hash="0", kind="")
    path = save_graph(tmp_path / "g.json", build_graph_file(attr, prune(attr), prompt="p", model=ident,
                                                            transcoders=ident, settings={}), attr)  # fmt: skip
    assert main(["prune", str(path), "--rank-by", rank_by, "--node-threshold", "0.5", "--json"]) == 0
    capsys.readouterr()
    eff = effects(attr)
    rank = eff.target_influence if rank_by == "target-influence" else eff.signed_effect.abs()
    mask = prune(attr, node_threshold=0.5, rank=rank).node_mask
    graph = load_graph(path)
    assert {n.id for n in graph.nodes} == {node_id(attr.layout.node(r)) for r in mask.nonzero().flatten().tolist()}
    assert not torch.equal(mask, prune(attr, node_threshold=0.5).node_mask)  # the ranking matters
    assert graph.metadata.settings["rank_by"] == rank_by
