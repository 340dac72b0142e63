"""`tracer validate GRAPH` with its defaults (the top 20 features by influence plus every supernode, replacement
mode, report beside the graph), checked against direct ablations; and `python -m tracer.validate_planted`
(tracer.validate.planted_validation) on three held-out prompts, its means checked by hand and one prompt against
`tracer validate`."""

from __future__ import annotations

import json

import pytest
import torch

import tracer.validate_planted as vp
from tracer.cli import main
from tracer.graphfile import load_graph, save_graph
from tracer.interventions import FeatureRef, Intervention, Mode, intervene
from tracer.layout import NodeKind
from tracer.models import load_model
from tracer.schema import Supernode
from transcoders import DEFAULT_TRANSCODERS, load_transcoders

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def france(tmp_path_factory):
    path = tmp_path_factory.mktemp("validate_defaults") / "france.json"
    assert main(["trace", PROMPT, "-o", str(path), "--json", "--threads", "1"]) == 0
    return path


def ablated(lm, tc, ids, mode, feats):
    """Measured change of the demeaned ' Paris' logit when `feats` (graph nodes) are ablated, run directly."""
    res = intervene(lm.model, tc, torch.tensor(ids), [Intervention.ablate(*(FeatureRef(n.layer, n.feature, n.pos)
                                                                            for n in feats))], mode)  # fmt: skip
    return res.logit_change(1089)


def test_validate_defaults_top_20_replacement_mode(france, capsys):
    g = load_graph(france)
    feats = sorted((n for n in g.nodes if n.kind is NodeKind.FEATURE), key=lambda n: -n.influence)
    assert len(feats) > 21 and feats[19].influence > feats[20].influence  # the 20th and 21st are told apart
    g.view.supernodes = [Supernode(label="grp", members=[feats[25].id, feats[30].id])]
    path = save_graph(france.with_name("sn.json"), g)
    capsys.readouterr()
    assert main(["validate", str(path), "--no-png", "--json", "--threads", "1"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["mode"] == "replacement" and r["target"] == " Paris"
    assert [c["label"] for c in r["candidates"]] == [n.id for n in feats[:20]] + ["grp"]
    assert [c["influence"] for c in r["candidates"][:20]] == pytest.approx([n.influence for n in feats[:20]])
    assert json.loads(path.with_name("sn.validation.json").read_text()) == r  # the default report path
    assert path.with_name("sn.validation.html").is_file()
    lm = load_model()
    tc = load_transcoders(DEFAULT_TRANSCODERS, lm.cfg, dtype=torch.float32)
    ids = g.metadata.token_ids
    gaps = []
    for c, n in zip(r["candidates"][:3], feats[:3], strict=True):
        assert c["measured"] == pytest.approx(ablated(lm, tc, ids, Mode.REPLACEMENT, [n]), abs=1e-4)
        gaps.append(abs(c["measured"] - ablated(lm, tc, ids, Mode.FREE, [n])))
    assert max(gaps) > 0.1  # so the measurements above are not the free model's
    assert r["candidates"][20]["measured"] == pytest.approx(
        ablated(lm, tc, ids, Mode.REPLACEMENT, [feats[25], feats[30]]), abs=1e-4)  # fmt: skip


def test_validate_planted_three_prompts(france, tmp_path, monkeypatch, capsys):
    held = tmp_path / "heldout.json"
    held.write_text(json.dumps([
        {"task": "opposites", "prompt": "The opposite of hot is", "answer": " cold"},
        {"task": "facts", "prompt": PROMPT, "answer": " Paris"},
        {"task": "facts", "prompt": "The capital of Germany is", "answer": " Berlin"},  # top token: ' called'
        {"task": "facts", "prompt": "The capital of Italy is", "answer": " Rome"},  # past --per-task 2
    ]))  # fmt: skip
    monkeypatch.setattr(vp, "HELDOUT", held)
    out = tmp_path / "planted.json"
    capsys.readouterr()
    assert vp.main(["--per-task", "2", "--top", "5", "--json", "-o", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == r
    rows = r["per_prompt"]
    assert r["n_prompts"] == 3 and [(x["task"], x["prompt"], x["top1"]) for x in rows] == [
        ("facts", PROMPT, " Paris"), ("facts", "The capital of Germany is", " called"),
        ("opposites", "The opposite of hot is", " cold")]  # fmt: skip
    assert r["top1_is_answer"] == pytest.approx(2 / 3) and r["mode"] == "replacement" and r["top"] == 5
    for key in ("spearman_signed", "spearman_influence", "sign_agreement", "completeness_surviving"):
        assert r[key] == pytest.approx(sum(x[key] for x in rows) / 3)
    assert r["per_task"] == pytest.approx({"facts": (rows[0]["spearman_signed"] + rows[1]["spearman_signed"]) / 2,
                                           "opposites": rows[2]["spearman_signed"]})  # fmt: skip
    # the France row is what `tracer validate --top 5` says of the same prompt's graph
    assert main(["validate", str(france), "--top", "5", "--no-png", "--json", "--threads", "1", "-o",
                 str(tmp_path / "v.json")]) == 0  # fmt: skip
    v = json.loads(capsys.readouterr().out)
    for key in ("spearman_signed", "spearman_influence", "sign_agreement"):
        assert rows[0][key] == pytest.approx(v[key], abs=1e-6)
    assert rows[0]["completeness_surviving"] == pytest.approx(v["completeness"]["surviving"], abs=1e-6)
