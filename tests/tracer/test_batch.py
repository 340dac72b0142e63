"""`tracer trace --prompts`: one graph per prompt equal to a single trace, index.json with failures by line number,
resume, and the same graphs from 2 torchrun ranks (gloo) as from 1 process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tracer.test_trace_cli import subject  # noqa: F401 (module-scoped fixture)
from tracer.batch import INDEX_NAME, load_index
from tracer.cli import main
from tracer.graphfile import load_attribution, load_graph
from tracer.prune import Edges
from viewer.data import GraphStore

LINES = [
    '{"prompt": "the cat sat on"}',
    "[1, 2]",
    '{"text": "no prompt"}',
    "",
    '{"prompt": "   "}',
    '{"prompt": "the dog ate the", "name": "Dog"}',
    "not json",
    '{"prompt": "' + "the cat " * 40 + '"}',
    '{"prompt": "a cat and a dog"}',
]


def _files(root: Path) -> list[str]:
    return ["--model", str(root / "model"), "--transcoders", str(root / "clt")]


def _batch(root: Path, prompts: Path, out: Path, *extra: str) -> int:
    return main(["trace", "--prompts", str(prompts), "-o", str(out), "--json", *_files(root), *extra])


def _content(path: Path) -> tuple:
    g = load_graph(path)
    e = Edges.of(load_attribution(path).adjacency)
    return ([n.model_dump() for n in g.nodes], [e.model_dump() for e in g.edges], e.rows.tolist(), e.cols.tolist(),
            e.values.tolist())  # fmt: skip


def test_batch_index_failures_and_single_trace_equality(subject, tmp_path, capsys):  # noqa: F811
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(LINES) + "\n")
    out = tmp_path / "out"
    assert _batch(subject, prompts, out) == 0
    assert json.loads(capsys.readouterr().out) | {"index": ""} == {"index": "", "traced": 3, "skipped": 0,
                                                                   "failed": 5}  # fmt: skip
    index = load_index(out / INDEX_NAME)
    by_line = {e.line: e for e in index.entries}
    assert sorted(by_line) == [1, 2, 3, 5, 6, 7, 8, 9]
    assert [by_line[i].status for i in (2, 3, 5, 7, 8)] == ["failed"] * 5
    assert "not a JSON object" in by_line[2].error and 'no string "prompt"' in by_line[3].error
    assert "empty" in by_line[5].error and "not JSON" in by_line[7].error and "context window" in by_line[8].error
    assert by_line[6].file == "dog.json" and by_line[1].file == "0001-the-cat-sat-on.json"
    # each graph is what a single `tracer trace` writes
    single = tmp_path / "single.json"
    assert main(["trace", "the cat sat on", "-o", str(single), "--json", *_files(subject)]) == 0
    capsys.readouterr()
    assert _content(out / "0001-the-cat-sat-on.json") == _content(single)
    g = load_graph(single)
    e = by_line[1]
    assert e.n_nodes == len(g.nodes) and e.n_edges == len(g.edges) and e.scores == g.metadata.scores
    probs = [t["probability"] for t in e.top_logits]
    assert probs == sorted(probs, reverse=True) and len(probs) == sum(n.kind == "logit" for n in g.nodes)
    # the viewer's picker lists the index in line order, failures with their error
    picker = GraphStore(out).entries()
    assert [p.graph_id for p in picker] == ["0001-the-cat-sat-on.json", "line 2", "line 3", "line 5", "dog.json",
                                            "line 7", "line 8", "0009-a-cat-and-a-dog.json"]  # fmt: skip
    assert picker[0].n_nodes == len(g.nodes) and picker[0].prompt == "the cat sat on" and "empty" in picker[3].error
    # resume: nothing re-traced; a changed setting re-traces
    stamp = (out / "dog.json").stat().st_mtime_ns
    assert _batch(subject, prompts, out) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 3
    assert (out / "dog.json").stat().st_mtime_ns == stamp
    assert _batch(subject, prompts, out, "--node-threshold", "0.5") == 0
    assert json.loads(capsys.readouterr().out)["traced"] == 3


def test_batch_bad_input_one_line_error(subject, tmp_path, capsys):  # noqa: F811
    assert _batch(subject, tmp_path / "missing.jsonl", tmp_path / "o") == 2
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    assert _batch(subject, empty, tmp_path / "o") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: cannot read prompt file") and err[1].startswith("error: prompt file")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_ranks_write_the_same_graphs_as_one(subject, tmp_path, capsys):  # noqa: F811
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(LINES) + "\n")
    one, two = tmp_path / "one", tmp_path / "two"
    assert _batch(subject, prompts, one) == 0
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "tracer", "trace", "--prompts", str(prompts), "-o", str(two), "--json", *_files(subject)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=300)
    finally:  # torchrun's workers too, if it hangs
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    i1, i2 = load_index(one / INDEX_NAME), load_index(two / INDEX_NAME)
    assert i2.world_size == 2
    strip = lambda i: [e.model_dump(exclude={"seconds"}) for e in i.entries]  # noqa: E731
    assert strip(i1) == strip(i2)
    for e in i1.ok():
        assert e.file is not None and _content(one / e.file) == _content(two / e.file)
