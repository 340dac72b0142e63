"""`tracer view` from the command line to the server's run call (never served): loopback by default, read-only on
any other address unless --allow-write, and a start-up warning that says which."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from tracer.cli import main
from tracer.graphfile import load_graph
from viewer.handlers import READ_ONLY, Env, handle_save


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]




@pytest.mark.parametrize(("extra", "read_only"), [([], True), (["--allow-write"], False)])
def test_non_loopback_host_is_read_only_unless_allowed(graph_dir: Path, served, caplog, capsys, extra, read_only):
    path, port = graph_dir / "small.json", free_port("0.0.0.0")
    before = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="viewer"):
        assert main(["view", str(path), "--host", "0.0.0.0", "--port", str(port), *extra]) == 0
    assert served["run"] == {"host": "0.0.0.0", "port": port, "debug": False, "threaded": True}
    env: Env = served["env"]
    assert env.read_only is read_only
    [warning] = [r for r in caplog.records if r.name == "viewer" and r.levelno == logging.WARNING]
    assert "serving on 0.0.0.0" in warning.getMessage() and "anyone who can reach this address" in warning.getMessage()
    assert ("Save is off (read-only; --allow-write turns it on)" in warning.getMessage()) is read_only
    assert ("with --allow-write" in warning.getMessage()) is not read_only
    assert f"viewer: http://0.0.0.0:{port}/" in capsys.readouterr().out
    saved = handle_save(env, "?graph=small.json&pinnedIds=EMB@0")
    if read_only:
        assert saved == READ_ONLY and path.read_bytes() == before
    else:
        assert saved.startswith("Saved view") and load_graph(path).view.pinned == ["EMB@0"]


def test_default_host_is_loopback_writable_and_quiet(graph_dir: Path, served, caplog, capsys):
    port = free_port("127.0.0.1")
    with caplog.at_level(logging.WARNING, logger="viewer"):
        assert main(["view", str(graph_dir / "small.json"), "--port", str(port)]) == 0
    assert served["run"]["host"] == "127.0.0.1" and served["run"]["port"] == port
    assert served["env"].read_only is False
    assert not [r for r in caplog.records if r.name == "viewer"]  # no exposure warning on loopback
    assert f"viewer: http://127.0.0.1:{port}/" in capsys.readouterr().out
