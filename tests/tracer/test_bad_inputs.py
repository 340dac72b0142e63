"""Every bad input of tests/tracer/bad_inputs.py: exit 2, one `error:` line naming the file or value, no traceback,
nothing new or changed in the case's tmp folder (every -o is inside it); the heaviest under a memory limit; the README
table is current."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tracer.bad_inputs import CASES, Case, Ctx, table
from tests.tracer.cli_subject import write_subject
from tracer.cli import main
from tracer.graphfile import sidecar_path
from transcoders import save_transcoders
from transcoders.formats import TranscoderFormat

ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT = 3 << 30  # address space of a subprocess case (torch alone maps ~0.7 GB)


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("subject")
    tc = write_subject(root)
    save_transcoders(tc, root / "ct", TranscoderFormat.CIRCUIT_TRACER)
    graph = root / "graphs" / "g.json"
    argv = ["trace", "the cat sat on", "--model", str(root / "model"), "--transcoders", str(root / "clt"), "--json"]
    assert main([*argv, "-o", str(graph)]) == 0
    return root


def make_ctx(subject: Path, tmp: Path) -> Ctx:
    out = tmp / "out"
    out.mkdir(parents=True)
    shutil.copy(subject / "graphs" / "g.json", out / "g.json")
    shutil.copy(sidecar_path(subject / "graphs" / "g.json"), sidecar_path(out / "g.json"))
    return Ctx(subject, tmp, out)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of everything under `folder`, folders included (a folder's mtime moves when an entry is made or
    removed in it). Taken of a case's whole tmp folder after its inputs are written: every -o lies inside it."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def outputs(argv: list[str]) -> list[Path]:
    return [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in ("-o", "--output")]


def named(case: Case, ctx: Ctx, argv: list[str]) -> str:
    """What the case's error line must name. A path must be one given in argv (a trailing / dropped), a file in a
    folder given, or a file beside one given (a graph's sidecar); any other is a value (`got 0`, `'<s>'`)."""
    name = case.named(ctx)
    if name.startswith("/"):
        given = [Path(a) for a in argv if a.startswith("/")]
        assert any(Path(name) == g or Path(name).parent in (g, g.parent) for g in given), name
    return name


def check_error(case: Case, name: str, rc: int, out: str, err: str) -> None:
    """Exit 2, one `error:` line with the case's fragment and `name` (whole: not the start of a longer path)."""
    lines = err.splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.expect in lines[0], lines[0]
    assert re.search(rf"(?<![\w/.-]){re.escape(name)}(?![\w/.-])", lines[0]), f"{lines[0]!r} does not name {name!r}"
    assert "Traceback" not in err + out


def run_case(case: Case, ctx: Ctx, capsys) -> None:
    """Run one case through the CLI: exit 2, its one error line, nothing new or changed in its tmp folder."""
    argv = case.argv(ctx)
    assert all(o.is_relative_to(ctx.tmp) for o in outputs(argv)), "an -o outside the snapshot"
    capsys.readouterr()
    before = snapshot(ctx.tmp)
    rc = main(argv)
    cap = capsys.readouterr()
    check_error(case, named(case, ctx, argv), rc, cap.out, cap.err)
    assert snapshot(ctx.tmp) == before


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_and_writes_nothing(case: Case, subject, tmp_path, capsys):
    run_case(case, make_ctx(subject, tmp_path), capsys)


HEAVY = ("model-nan", "model-huge-layers", "clt-huge-shape", "sidecar-huge-layout", "model-huge-header")
DRIVER = """
import contextlib, io, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from tracer.cli import main
out = []
for argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    out.append([rc, err.getvalue()])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_heavy_bad_inputs_stay_within_memory(subject, tmp_path):
    """The heaviest inputs (NaN weights, 10⁹-sized shapes and headers) in one subprocess under an address-space
    limit: each still ends in its one error line, and nothing is written."""
    cases = [next(c for c in CASES if c.id == i) for i in HEAVY]
    ctxs = [make_ctx(subject, tmp_path / c.id) for c in cases]
    argvs = [c.argv(x) for c, x in zip(cases, ctxs, strict=True)]
    before = [snapshot(x.tmp) for x in ctxs]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", DRIVER.format(limit=MEMORY_LIMIT)], input=json.dumps(argvs), cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout.splitlines()[-1])
    for case, (rc, err), x, argv, b in zip(cases, results, ctxs, argvs, before, strict=True):
        check_error(case, named(case, x, argv), rc, "", err)
        assert snapshot(x.tmp) == b


def test_busy_port_is_one_line(subject, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc = main(["view", str(subject / "graphs" / "g.json"), "--port", str(port)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1


def test_unwritable_folder_is_one_line(subject, tmp_path, capsys, monkeypatch):
    """A read-only folder (simulated: tests may run as root, which ignores permissions)."""
    ctx = make_ctx(subject, tmp_path)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != ctx.out)
    before = snapshot(ctx.tmp)
    assert main(ctx.trace("the cat")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: graph file") and "is not writable" in err and err.count("\n") == 1
    assert snapshot(ctx.tmp) == before


def test_graphml_control_characters_are_replaced(subject, tmp_path):
    ctx = make_ctx(subject, tmp_path)
    from tests.tracer.bad_inputs import edit_json

    edit_json(ctx.graph, lambda d: d["nodes"][0].update(label="bell\x07 and nul\x00"))
    out = tmp_path / "g.graphml"
    assert main(["export", str(ctx.graph), "--to", "graphml", "-o", str(out)]) == 0
    import networkx as nx

    g = nx.read_graphml(out)
    assert "bell\ufffd and nul\ufffd" in {d.get("label") for _, d in g.nodes(data=True)}


def test_readme_table_is_current():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert table() in readme, "README table out of date: run `python -m tests.tracer.bad_inputs` and paste it"


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1", b"junk" * 100])
def test_truncated_training_checkpoint_is_one_line(tmp_path, content):
    from tracer.errors import ConfigError
    from transcoders.train import TrainConfig, load_checkpoint

    ckpt = tmp_path / "checkpoint.safetensors"
    ckpt.write_bytes(content)
    with pytest.raises(ConfigError, match="checkpoint .* is truncated or corrupt") as e:
        load_checkpoint(ckpt, TrainConfig())
    assert "\n" not in str(e.value)
