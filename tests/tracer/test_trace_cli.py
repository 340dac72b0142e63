"""`tracer trace` end to end on a tiny saved model, tokenizer and CLT; bad input gives one-line errors."""

from __future__ import annotations

import json

import pytest

from tests.tracer.cli_subject import write_subject
from tracer.cli import main
from tracer.graphfile import load_attribution, load_graph
from tracer.layout import NodeKind


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("subject")
    write_subject(root)
    return root


def trace(subject, *args):
    return main(["trace", *args, "--model", str(subject / "model"), "--transcoders", str(subject / "clt")])


def test_trace_writes_graph_and_summary(subject, tmp_path, capsys):
    out = tmp_path / "g.json"
    assert trace(subject, "the cat sat on", "-o", str(out), "--json", "--batch-size", "7") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"] == str(out) and summary["nodes_pruned"] <= summary["nodes_unpruned"]
    assert 0 <= summary["replacement_score"] <= 1 and 0 <= summary["completeness_score"] <= 1
    assert summary["stats"]["replacement_max_abs_logit_error"] < 1e-4
    graph = load_graph(out)
    kinds = {n.kind for n in graph.nodes}
    assert {NodeKind.EMBEDDING, NodeKind.LOGIT} <= kinds
    assert graph.metadata.tokens[0] == "<s>" and graph.metadata.prompt == "the cat sat on"
    attr = load_attribution(out)
    assert attr.adjacency.nnz == graph.metadata.n_edges_unpruned
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.adjacency.safetensors", "g.json"]  # no temp files


def test_custom_target_difference(subject, tmp_path, capsys):
    out = tmp_path / "d.json"
    assert trace(subject, "the cat sat on", "-o", str(out), "--json", "--target", "the", "--minus", "a") == 0
    summary = json.loads(capsys.readouterr().out)
    assert [t["token"] for t in summary["top_logits"]] == ["the − a"]


@pytest.mark.parametrize(
    ("prompt", "extra", "message"),
    [
        ("   ", [], "the prompt is empty"),
        ("the cat " * 40, [], "context window is 32"),
        ("the cat", ["--target", "the cat"], "not one"),
    ],
)
def test_bad_input_one_line_error(subject, tmp_path, capsys, prompt, extra, message):
    assert trace(subject, prompt, "-o", str(tmp_path / "x.json"), *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_mismatched_transcoders(subject, tmp_path, capsys):
    code = main(["trace", "the cat", "--model", str(subject / "model"), "--transcoders", str(subject / "wrong"),
                 "-o", str(tmp_path / "x.json")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "d_model" in err and err.count("\n") == 1


def test_missing_model(tmp_path, capsys):
    assert main(["trace", "x", "--model", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
