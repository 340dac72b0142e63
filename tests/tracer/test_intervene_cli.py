"""`tracer intervene` / `tracer generate` on the bundled default model, and their one-line input errors."""

from __future__ import annotations

import json

import pytest

from tests.tracer.graph_fixtures import random_attribution
from tracer.cli import main
from tracer.graphfile import build_graph_file, save_graph
from tracer.intervene_cli import SpecError, parse_spec
from tracer.prune import prune
from tracer.schema import Identity, Supernode

PROMPT = "The capital of France is"


def run_json(capsys, argv):
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_intervene_json_scale_one_is_identity_and_ablation_moves(capsys):
    same = run_json(capsys, ["intervene", PROMPT, "--scale", "1/0=1", "--scale", "2/3@2=1", "--token", " Paris"])
    assert same["top_before"][0]["token"] == " Paris"
    assert same["top_before"] == same["top_after"]
    assert same["token"]["logit_before"] == pytest.approx(same["token"]["logit_after"], abs=1e-4)
    # setting features of layers 0-1 at the last position moves the logits
    argv = ["intervene", PROMPT, "--mode", "free"] + [x for i in range(16) for x in ("--set", f"{i % 2}/{i}@5=8")]
    moved = run_json(capsys, argv)
    assert moved["token"]["token"] == " Paris"
    assert moved["token"]["logit_after"] != pytest.approx(moved["token"]["logit_before"], abs=1e-6)


def test_generate_steer_one_matches_plain(capsys):
    out = run_json(capsys, ["generate", PROMPT, "--steer", "1/7=1", "--tokens", "3"])
    assert out["plain"] == out["steered"] and out["plain"].startswith(" Paris")


def test_parse_spec():
    assert parse_spec("set", "2/17@3=1.5").features == ((2, 17, 3),)
    assert parse_spec("ablate", "F1.4@2").features == ((1, 4, 2),)
    assert parse_spec("scale", "sn:say cold=2").supernode == "say cold"
    with pytest.raises(SpecError, match="not a number"):
        parse_spec("scale", "1/2=abc")
    with pytest.raises(SpecError, match="needs a value"):
        parse_spec("set", "1/2@3")


@pytest.fixture
def other_graph(tmp_path):
    attr = random_attribution(n_layers=3, n_pos=6, seed=4)
    ident = Identity(name="other", content_hash="0123456789abcdef", kind="clt")
    g = build_graph_file(attr, prune(attr), prompt=PROMPT, model=ident, transcoders=ident, settings={})
    g.view.supernodes = [Supernode(label="cap", members=["F0.1@1"])]
    return save_graph(tmp_path / "g.json", g, attr)


@pytest.mark.parametrize("argv", [
    ["intervene", PROMPT, "--ablate", "1/999999"],
    ["intervene", PROMPT, "--ablate", "99/1"],
    ["intervene", PROMPT, "--ablate", "1/3@99"],
    ["intervene", PROMPT, "--scale", "1/3=lots"],
    ["intervene", PROMPT, "--set", "1/3@2=nan"],
    ["intervene", PROMPT, "--ablate", "x/3"],
    ["intervene", PROMPT, "--ablate", "sn:cap"],
    ["intervene", PROMPT],
    ["generate", PROMPT, "--steer", "1/3=2", "--tokens", "-1"],
])  # fmt: skip
def test_bad_input_one_line_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_supernode_of_other_transcoders_rejected(other_graph, capsys):
    assert main(["intervene", "--graph", str(other_graph), "--ablate", "sn:cap"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: supernode 'cap' has features of transcoder set other") and err.count("\n") == 1
