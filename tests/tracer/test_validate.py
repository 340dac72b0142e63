"""tracer.validate: Spearman against hand-computed values, ablation measurements and completeness against a
hand-written replacement model, and `tracer validate` end to end on the default model."""

from __future__ import annotations

import json

import pytest

from tests.conftest import random_model, tiny_config
from tests.tracer.graph_fixtures import random_attribution
from tests.tracer.test_attribution import CFG, TOKENS, random_transcoder
from tests.tracer.test_interventions import manual_replacement
from tracer.attribute import attribute
from tracer.cli import main
from tracer.graphfile import build_graph_file, save_graph
from tracer.interventions import FeatureRef
from tracer.models import HookPoint
from tracer.prune import prune
from tracer.record import record
from tracer.schema import Identity
from tracer.validate import spearman, validate
from transcoders import TranscoderKind


def test_spearman_hand_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6·2 / (4·15)
    # ties share the average rank: x ranks (1.5, 1.5, 3), y ranks (1, 2, 3) -> Pearson 0.866
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(0.8660254, abs=1e-6)
    assert spearman([1, 1, 1], [1, 2, 3]) != spearman([1, 1, 1], [1, 2, 3])  # constant: NaN


def test_validate_measurements_and_completeness_against_hand_recomputation():
    model = random_model(tiny_config("llama"))
    tc = random_transcoder(model, TranscoderKind.CLT, HookPoint.MLP_IN, True)
    attr = attribute(model, tc, TOKENS, None, CFG)
    pr = prune(attr, node_threshold=0.9)
    lay = attr.layout
    rec = record(model, tc, TOKENS)
    token = int(lay.logit_tokens[0])
    v = validate(model, tc, attr, pr.node_mask, top=4, supernodes={"grp": lay.feature_rows()[:3].tolist()})
    assert len(v.candidates) == 5 and v.candidates[-1].label == "grp"

    def demeaned(logits):
        return float(logits[-1, token] - logits[-1].mean())

    def ablating(refs):
        def edit_for(layer):
            def edit(a):
                for f in refs:
                    if f.layer == layer:
                        a[f.pos, f.index] = 0
                return a

            return edit

        return demeaned(manual_replacement(model, tc, rec, {i: edit_for(i) for i in range(3)})[0])

    before = demeaned(rec.logits)
    for c in v.candidates:
        assert c.measured == pytest.approx(ablating(c.features) - before, abs=1e-9)
    c = v.completeness
    assert c is not None and c.target_before == pytest.approx(before, abs=1e-9)
    inside = pr.node_mask[lay.feature_rows()]
    refs = [FeatureRef(int(f[0]), int(f[2]), int(f[1])) for f, keep in zip(lay.features, inside, strict=True)
            if not keep]  # fmt: skip
    assert c.n_outside == len(refs) > 0
    assert c.outside_ablated == pytest.approx(ablating(refs), abs=1e-9)
    all_refs = [FeatureRef(int(f[0]), int(f[2]), int(f[1])) for f in lay.features]
    assert c.all_ablated == pytest.approx(ablating(all_refs), abs=1e-9)
    assert -1 <= v.spearman_signed <= 1 and 0 <= v.sign_agreement <= 1


@pytest.fixture(scope="module")
def default_graph(tmp_path_factory):
    out = tmp_path_factory.mktemp("validate") / "france.json"
    assert main(["trace", "The capital of France is", "-o", str(out), "--json", "--threads", "1"]) == 0
    return out


def test_validate_cli_default_model(default_graph, capsys):
    capsys.readouterr()
    report = default_graph.with_name("r.json")
    argv = ["validate", str(default_graph), "--top", "6", "-o", str(report), "--no-png", "--json", "--threads", "1"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["target"] == " Paris" and len(r["candidates"]) == 6
    assert -1 <= r["spearman_signed"] <= 1 and r["completeness"]["target_before"] > 0
    c = r["completeness"]
    assert c["surviving"] == pytest.approx(c["outside_ablated"] / c["target_before"])
    assert json.loads(report.read_text())["spearman_signed"] == r["spearman_signed"]
    assert report.with_suffix(".html").read_text().count("<html") == 1


def test_validate_cli_wrong_model_and_bad_top(tmp_path, capsys):
    attr = random_attribution(n_layers=3, n_pos=6, seed=4)
    ident = Identity(name="other", content_hash="0123456789abcdef", kind="clt")
    path = save_graph(tmp_path / "g.json", build_graph_file(attr, prune(attr), prompt="x", model=ident,
                                                            transcoders=ident, settings={}), attr)  # fmt: skip
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the graph was traced with other") and err.count("\n") == 1
    assert main(["validate", str(path), "--top", "0"]) == 2
    assert main(["validate", str(tmp_path / "missing.json")]) == 2
    assert main(["validate", str(path), "-o", str(tmp_path)]) == 2  # a directory is no report file
    assert not list(tmp_path.glob("*.validation.*"))
