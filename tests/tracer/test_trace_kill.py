"""A real `tracer trace` process killed (SIGKILL) at random points of its write phase, 10 times, over an existing
graph pair: right after each kill the pair loads as the old prompt's or the new one's, or is refused as a stale
pair; the next run's recovery leaves the old or the new pair and no temp file; one more complete run leaves the new
pair and no temp file.

1. start: one Python process (`sys.executable -c DRIVER`, cwd the repo root) runs the CLI's `main(["trace", ...])`
   for the old prompt in-process (it writes the old pair and warms every lazy import), so that each trial's trace,
   forked from it, starts in milliseconds instead of re-importing torch (~10 s per process here).
2. trial: restore the old pair; the driver forks a child running `main(["trace", <new prompt>, ...])`, whose write
   steps (the sidecar, the JSON temp file, the two renames) are each stretched by a short pause so that kill points
   spread over all of them; as soon as the child's first temp file appears, wait a seeded random delay (stratified
   over the write phase's length) and SIGKILL it.
3. check: the pair loads consistently (prompt "old" or "new") or is refused with the one-line stale-pair error;
   tracer.pair.recover_pair (the next run's first step) leaves a consistent pair and no temp file.
4. last: after the last kill, one complete trace (its own recovery first) leaves the new pair and no temp file.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tracer.cli_subject import write_subject
from tracer.errors import GraphFileError
from tracer.graphfile import load_attribution, load_graph, recover_pair, sidecar_path

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 10
PAUSE = 0.01  # seconds before each write step of a killed trace (4 steps)
OLD, NEW = "the cat", "the dog ate the bone on the mat"  # different lengths: a mixed pair cannot pass as one

# stdin: one JSON request a line; stdout: one JSON reply a line. {"argv", "here": true} runs main in this process
# (-> {"rc", "stdout"}); {"argv", "pause"} forks a child running main (-> {"pid"}, then {"rc"} once it is gone).
DRIVER = """
import contextlib, io, json, os, sys, time, traceback
import torch
torch.set_num_threads(1)
from tracer import pair
from tracer.cli import main

def slowed(fn, pause):
    def wrapped(*a, **k):
        time.sleep(pause)
        return fn(*a, **k)
    return wrapped

for line in sys.stdin:
    req = json.loads(line)
    if req.get("here"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(req["argv"])
        print(json.dumps({"rc": rc, "stdout": buf.getvalue()}), flush=True)
        continue
    pid = os.fork()
    if pid == 0:  # the child never returns into this loop
        rc = 70
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            for name in ("_save_sidecar", "new_temp", "publish"):
                setattr(pair, name, slowed(getattr(pair, name), req["pause"]))
            rc = main(req["argv"])
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(rc)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("subject")
    write_subject(root)
    return root


class Driver:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip

    def send(self, req: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the driver died (exit {self.proc.wait()})"
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".tmp"))


def _state(target: Path) -> str:
    """'old' / 'new' for a consistent pair (the sidecar's positions are the JSON's tokens), 'stale' if refused."""
    g = load_graph(target)
    try:
        a = load_attribution(target, g)
    except GraphFileError as e:
        assert "does not belong" in str(e) and "\n" not in str(e), e
        return "stale"
    assert a.layout.n_pos == len(g.metadata.token_ids), "a mixed pair was read as if it were one"
    return {OLD: "old", NEW: "new"}[g.metadata.prompt]


def _wait_for_temp(folder: Path, pid: int) -> None:
    """Poll until the writer's first temp file appears (it must not finish or die before that)."""
    deadline = time.monotonic() + 60
    while not _temps(folder):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pytest.fail("the trace ended before its write phase was seen")
        assert time.monotonic() < deadline, "no write phase within 60 s"
        time.sleep(0.0002)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_trace_killed_in_write_phase_leaves_old_or_new_pair(subject, tmp_path):
    out = tmp_path / "out"
    target, backup = out / "g.json", tmp_path / "old"
    base = ["--model", str(subject / "model"), "--transcoders", str(subject / "clt"), "-o", str(target), "--json",
            "--threads", "1"]  # fmt: skip
    rng = random.Random(0)
    driver = Driver()
    try:
        driver.send({"argv": ["trace", OLD, *base], "here": True})  # 1.
        r = driver.reply()
        assert r["rc"] == 0 and _state(target) == "old"
        window = 4 * PAUSE + 2 * json.loads(r["stdout"])["timings"]["write"]  # the killed runs' write phase
        backup.mkdir()
        for p in (target, sidecar_path(target)):
            shutil.copy(p, backup / p.name)
        seen, mid_write = [], 0
        for trial in range(TRIALS):  # 2.
            for p in backup.iterdir():
                shutil.copy(p, out / p.name)
            driver.send({"argv": ["trace", NEW, *base], "pause": PAUSE})
            pid = driver.reply()["pid"]
            _wait_for_temp(out, pid)
            time.sleep((trial + rng.random()) / TRIALS * window)
            with contextlib.suppress(ProcessLookupError):  # it may have finished first
                os.kill(pid, signal.SIGKILL)
            rc = driver.reply()["rc"]
            assert rc in (0, -signal.SIGKILL), rc
            mid_write += rc == -signal.SIGKILL and bool(_temps(out))
            seen.append(_state(target))  # 3.
            if trial < TRIALS - 1:  # the last trial's leftovers are for the complete run
                recover_pair(target)
                assert _state(target) in ("old", "new"), (trial, seen)
                assert sorted(p.name for p in out.iterdir()) == ["g.adjacency.safetensors", "g.json"], trial
        print("states right after each kill:", seen, "killed mid-write:", mid_write)
        assert set(seen) <= {"old", "new", "stale"}
        assert mid_write >= 2, f"only {mid_write} of {TRIALS} kills fell inside the write phase"
        driver.send({"argv": ["trace", NEW, *base], "pause": 0.0})  # 4.
        driver.reply()
        assert driver.reply()["rc"] == 0
        assert _state(target) == "new"
        assert sorted(p.name for p in out.iterdir()) == ["g.adjacency.safetensors", "g.json"]
    finally:
        driver.close()
