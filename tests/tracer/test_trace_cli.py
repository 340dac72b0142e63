"""`tracer trace` end to end on a tiny saved model, tokenizer and CLT; bad input gives one-line errors."""

from __future__ import annotations

import ast
import json
import re

import pytest

import tracer.pair
import tracer.prune
from tests.tracer.cli_subject import write_subject
from tracer.cli import main
from tracer.errors import GraphFileError
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


PHASES = ["imports", "model_load", "transcoder_load", "tokenize", "record", "targets", "plan", "logit_rows",
          "feature_rows", "assemble", "check", "prune", "graph_file", "write", "free", "total"]  # fmt: skip


def test_text_summary_matches_written_graph(subject, tmp_path, capsys):
    """The printed summary (README "What a trace gives you"), line by line, against the graph file and sidecar."""
    out = tmp_path / "t.json"
    assert trace(subject, "the cat sat on", "-o", str(out)) == 0
    text = capsys.readouterr().out
    graph, attr = load_graph(out), load_attribution(out)
    lines = text[text.index("prompt: ") :].rstrip("\n").split("\n")
    assert lines[0] == "prompt: 'the cat sat on'"
    logits = [n for n in graph.nodes if n.kind is NodeKind.LOGIT]
    assert lines[1].startswith("top logits: ") and len(logits) == 10
    printed = re.findall(r"('(?:[^'\\]|\\.)*') (\d\.\d{3})(?:, |$)", lines[1][len("top logits: ") :])
    assert [ast.literal_eval(s) for s, _ in printed] == [n.token for n in logits]  # repr'd tokens, in the graph's order
    assert [float(p) for _, p in printed] == pytest.approx([n.probability for n in logits], abs=5e-4)
    assert sorted((p for _, p in printed), reverse=True) == [p for _, p in printed]
    m = re.fullmatch(r"nodes: (\d+) -> (\d+) after pruning; edges: (\d+) -> (\d+)", lines[2])
    assert m is not None
    assert [int(x) for x in m.groups()] == [attr.layout.n_nodes, len(graph.nodes), attr.adjacency.nnz,
                                            len(graph.edges)]  # fmt: skip
    assert len(graph.nodes) < attr.layout.n_nodes and len(graph.edges) < attr.adjacency.nnz
    m = re.fullmatch(r"scores: replacement (\d\.\d{3}), completeness (\d\.\d{3})", lines[3])
    assert m is not None
    s = graph.metadata.scores
    assert [float(x) for x in m.groups()] == pytest.approx([s.replacement, s.completeness], abs=5e-4)
    assert lines[4].startswith("time: ")
    parts = [re.fullmatch(r"(\w+) (\d+\.\d\d)s", x) for x in lines[4][len("time: ") :].split(", ")]
    times = {m[1]: m[2] for m in parts if m is not None}
    assert list(times) == PHASES
    stored = {k: v for k, v in graph.metadata.timings.items() if k != "prune"}  # the attribution's own phases
    assert list(stored) == PHASES[4:11] and [float(times[k]) for k in stored] == pytest.approx(
        list(stored.values()), abs=0.006)  # fmt: skip
    total = float(times.pop("total"))
    assert 0 < sum(map(float, times.values())) <= total + 0.01 * len(times)  # the phases are parts of the process
    assert lines[5].startswith("top features (layer/index @ token, influence, label")
    feats = sorted((n for n in graph.nodes if n.kind is NodeKind.FEATURE), key=lambda n: -n.influence)[:5]
    rows = [re.fullmatch(r"  (\d+)/(\d+) @ ('.*')  (\d\.\d{3})  \(no label\)", x) for x in lines[6:11]]
    got = [(int(r[1]), int(r[2]), ast.literal_eval(r[3]), float(r[4])) for r in rows if r is not None]
    assert [g[:3] for g in got] == [(n.layer, n.feature, graph.metadata.tokens[n.pos]) for n in feats]
    assert [g[3] for g in got] == pytest.approx([n.influence for n in feats], abs=6e-4)  # rounded to 4, shown to 3
    assert feats[0].influence > feats[-1].influence > 0
    assert lines[11:] == [f"graph: {out}", f"view it: tracer view {out}"]


@pytest.mark.parametrize("error", [GraphFileError("pruning failed"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_failure_after_the_sidecar_writer_started_leaves_the_old_pair(subject, tmp_path, monkeypatch, capsys, error):
    """The sidecar's writer starts when attribution ends (tracer.pair.start_save); a failure while pruning cancels it:
    the old pair stays, byte for byte, and no temp file is left."""
    out = tmp_path / "g.json"
    assert trace(subject, "the cat", "-o", str(out)) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    started = []
    real = tracer.pair.start_save

    def spy(*a, **k):
        started.append(1)
        return real(*a, **k)

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(tracer.pair, "start_save", spy)
    monkeypatch.setattr(tracer.prune, "prune", fail)
    rc, line = (130, "error: interrupted") if isinstance(error, KeyboardInterrupt) else (2, "error: pruning failed")
    assert trace(subject, "the dog ate", "-o", str(out)) == rc
    assert capsys.readouterr().err.strip().splitlines()[-1] == line
    assert started == [1]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
