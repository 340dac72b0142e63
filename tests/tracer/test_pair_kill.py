"""The graph JSON and its sidecar are one unit: a writer killed (SIGKILL) at random points of save_graph leaves the
old pair, the new pair, or a mixed pair that every reader refuses; the next run (recover_pair, which trace, prune
and save_graph call first) leaves the old or the new pair and no temp file."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import random_model, tiny_config
from tests.tracer.test_attribution import random_transcoder
from tracer import graphfile
from tracer.attribute import TraceConfig, attribute
from tracer.errors import GraphFileError
from tracer.graphfile import build_graph_file, load_attribution, load_graph, recover_pair, save_graph, sidecar_path
from tracer.models import HookPoint
from tracer.prune import prune
from tracer.schema import Identity
from transcoders import TranscoderKind

TRIALS = 10


def _pair(model, tc, tokens: list[int], prompt: str):
    attr = attribute(model, tc, torch.tensor(tokens), None, TraceConfig())
    ident = Identity(name="tiny", content_hash="0")
    g = build_graph_file(attr, prune(attr), prompt=prompt, model=ident, transcoders=ident, settings={})
    return g, attr


@pytest.fixture(scope="module")
def pairs():
    model = random_model(tiny_config("llama"), dtype=torch.float32)
    tc = random_transcoder(model, TranscoderKind.CLT, HookPoint.MLP_IN, False).float()
    return [_pair(model, tc, [1, 5, 7, 9], "A"), _pair(model, tc, [1, 3, 4, 6, 8, 10, 12], "B")]


def _writer(target: Path, pairs, seed: int, ready: int) -> None:
    """Child: save B, A, B, ... forever, with random pauses inside every step of save_graph; writes a byte to the
    `ready` pipe after its first save."""
    rng = random.Random(seed)

    def slow(fn):
        def wrapped(*a, **k):
            time.sleep(rng.uniform(0, 0.004))
            return fn(*a, **k)

        return wrapped

    for name in ("new_temp", "publish", "_save_sidecar"):
        setattr(graphfile, name, slow(getattr(graphfile, name)))
    i = 1
    while True:
        save_graph(target, *pairs[i % 2])
        if i == 1:
            os.write(ready, b"x")
        i += 1


def _state(target: Path) -> str:
    """'A' / 'B' for a consistent pair (its sidecar's token count is the JSON's), 'stale' if refused."""
    g = load_graph(target)
    try:
        a = load_attribution(target, g)
    except GraphFileError as e:
        assert "does not belong" in str(e)
        return "stale"
    assert a.layout.n_pos == len(g.metadata.token_ids), "a mixed pair was read as if it were one"
    return g.metadata.prompt


def _temps(folder: Path) -> list[str]:
    """Our temp files and folders (`.NAME.<pid>-<random>.tmp`) and safetensors' own (`.tmpXXXXXX`)."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_killed_writes_leave_old_or_new_pair(pairs, tmp_path):
    rng = random.Random(0)
    target = tmp_path / "g.json"
    save_graph(target, *pairs[0])
    seen: list[str] = []
    for trial in range(TRIALS):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            try:
                os.close(r)
                _writer(target, pairs, seed=trial, ready=w)
            finally:
                os._exit(0)
        os.close(w)
        os.read(r, 1)  # the child is in its write loop
        os.close(r)
        time.sleep(rng.uniform(0.0, 0.1))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        seen.append(_state(target))  # right after the kill: consistent, or refused
        recover_pair(target)  # the next run's first step
        assert _state(target) in ("A", "B")
        assert _temps(tmp_path) == [], trial
        assert sorted(p.name for p in tmp_path.iterdir()) == ["g.adjacency.safetensors", "g.json"]
    assert set(seen) <= {"A", "B", "stale"}, seen
    print("states right after each kill:", seen)


def test_pending_json_is_published_when_its_sidecar_is_in_place(pairs, tmp_path):
    """The kill between the two renames, made by hand: new sidecar, old JSON, new JSON pending (dead writer)."""
    target = tmp_path / "g.json"
    save_graph(target, *pairs[0])
    other = tmp_path / "other"
    save_graph(other / "g.json", *pairs[1])
    os.replace(sidecar_path(other / "g.json"), sidecar_path(target))
    pending = tmp_path / ".g.json.999999999-x.tmp"  # no such pid: its writer is gone
    os.replace(other / "g.json", pending)
    assert _state(target) == "stale"
    recover_pair(target)
    assert _state(target) == "B" and _temps(tmp_path) == []


def test_live_writers_temp_files_are_kept(pairs, tmp_path):
    target = tmp_path / "g.json"
    mine = tmp_path / f".g.json.{os.getpid()}-x.tmp"
    mine.write_text("{}")
    dead = tmp_path / ".g.adjacency.safetensors.999999999-y.tmp"
    dead.mkdir()
    (dead / ".tmpAbC123").write_text("what safetensors left when its writer was killed")
    save_graph(target, *pairs[0])
    assert mine.exists() and not dead.exists()
    assert _temps(tmp_path) == [mine.name]
