"""Viewer security and load: the Host check, read-only when not loopback, bounded and shared re-prunes, a picker
and URL parser that survive malformed input."""

from __future__ import annotations

import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from tracer.graphfile import load_graph
from viewer import data, handlers
from viewer.app import create_app
from viewer.data import Gate, GraphStore, Lru, ViewerBusy
from viewer.handlers import READ_ONLY, Env, handle_save, handle_view
from viewer.security import allowed_hosts, is_loopback, read_only, request_host_name
from viewer.state import parse_query


@pytest.mark.parametrize(
    ("bound", "host", "status"),
    [("127.0.0.1", "127.0.0.1:8050", 200), ("127.0.0.1", "localhost:8050", 200), ("127.0.0.1", "evil.example", 403),
     ("127.0.0.1", "evil.example:8050", 403), ("localhost", "[::1]:8050", 200), ("10.1.2.3", "10.1.2.3:80", 200),
     ("10.1.2.3", "localhost", 403), ("0.0.0.0", "evil.example", 200)],
)  # fmt: skip
def test_host_header_is_checked_against_the_bound_host(graph_dir: Path, bound, host, status):
    client = create_app(graph_dir / "small.json", host=bound).server.test_client()
    for url in ("/", "/_dash-layout"):
        assert client.get(url, headers={"Host": host}).status_code == status


def test_host_helpers():
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.1") and not is_loopback("evil.example")
    assert allowed_hosts("::") is None and "localhost" in (allowed_hosts("127.0.0.1") or ())
    assert request_host_name("[::1]:8050") == "::1" and request_host_name("Evil.Example:1") == "evil.example"
    assert read_only("0.0.0.0", False) and not read_only("0.0.0.0", True) and not read_only("127.0.0.1", False)


def test_read_only_viewer_refuses_save(graph_dir: Path):
    path = graph_dir / "small.json"
    before = path.read_bytes()
    env = Env(GraphStore(graph_dir), read_only=True)
    assert handle_save(env, "?graph=small.json&pinnedIds=EMB@0") == READ_ONLY
    assert path.read_bytes() == before
    assert "Saved view" in handle_save(Env(GraphStore(graph_dir)), "?graph=small.json&pinnedIds=EMB@0")
    assert load_graph(path).view.pinned == ["EMB@0"]


def test_picker_survives_any_malformed_json(graph_dir: Path, monkeypatch):
    (graph_dir / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (graph_dir / "types.json").write_text('{"schema_version": 1, "nodes": 5, "edges": [{"target": [1]}]}')
    (graph_dir / "boom.json").write_text("{}")
    real = data.load_graph
    monkeypatch.setattr(data, "load_graph", lambda p: (_ for _ in ()).throw(RuntimeError("x"))
                        if Path(p).name == "boom.json" else real(p))  # fmt: skip
    entries = {e.graph_id: e for e in GraphStore(graph_dir).entries()}
    assert entries["small.json"].error == "" and entries["small.json"].n_nodes > 0
    assert all(entries[n].error for n in ("deep.json", "types.json", "boom.json"))


def test_deeply_nested_url_state_is_ignored(env: Env):
    deep = urllib.parse.quote("[" * 100_000 + "]" * 100_000)
    assert parse_query(f"?graph=small.json&supernodes={deep}").supernodes == ()
    out = handle_view(env, f"?graph=small.json&supernodes={deep}&clerps={deep}", None, None, None)
    assert out[-1]  # rendered keys: the graph page was built


def test_lru_builds_each_key_once_under_concurrency():
    calls, lru = [], Lru(2)

    def build():
        calls.append(1)
        time.sleep(0.05)
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(lru.get("k", build))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(g) for g in got}) == 1


def test_lru_passes_a_failed_build_to_its_waiters():
    lru, errors = Lru(2), []
    started = threading.Event()

    def build():
        started.set()
        time.sleep(0.05)
        raise ValueError("bad")

    def call():
        try:
            lru.get("k", build)
        except ValueError as e:
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4


def test_gate_bounds_running_and_queued():
    gate, release, entered = Gate(running=1, queued=1, wait_s=5), threading.Event(), threading.Event()

    def hold():
        entered.set()
        release.wait()

    first = threading.Thread(target=lambda: gate.run(hold))
    first.start()
    entered.wait()
    second = threading.Thread(target=lambda: gate.run(lambda: None))
    second.start()
    time.sleep(0.05)  # the second is queued now
    with pytest.raises(ViewerBusy, match="busy"):
        gate.run(lambda: None)
    release.set()
    first.join()
    second.join()
    assert gate.run(lambda: 7) == 7


def test_store_gate_runs_two_and_queues_six(graph_dir: Path):
    """The store's default Gate: a 3rd re-prune waits while 2 run, 6 may wait, the 9th is refused at once."""
    gate, release, lock = GraphStore(graph_dir).gate, threading.Event(), threading.Lock()
    running, peak, entered = [0], [0], threading.Semaphore(0)

    def hold():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        entered.release()
        release.wait(5)
        with lock:
            running[0] -= 1

    threads = [threading.Thread(target=gate.run, args=(hold,)) for _ in range(8)]
    for t in threads[:2]:
        t.start()
    assert entered.acquire(timeout=5) and entered.acquire(timeout=5)  # two run at once
    for t in threads[2:]:
        t.start()
    deadline = time.monotonic() + 5
    while gate._waiting < 6 and time.monotonic() < deadline:  # six queue behind them
        time.sleep(0.005)
    assert gate._waiting == 6 and running[0] == 2
    t0 = time.monotonic()
    with pytest.raises(ViewerBusy, match="too many re-prunes"):
        gate.run(lambda: None)
    assert time.monotonic() - t0 < 0.5  # refused at once, not after waiting
    release.set()
    for t in threads:
        t.join(5)
    assert peak[0] == 2 and running[0] == 0 and gate.run(lambda: 7) == 7


def test_reprunes_share_one_sidecar_read(graph_dir: Path, monkeypatch):
    reads = []
    real = data.load_attribution
    monkeypatch.setattr(data, "load_attribution", lambda *a, **k: reads.append(1) or real(*a, **k))
    store = GraphStore(graph_dir)
    threads = [threading.Thread(target=store.load, args=("small.json", t)) for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reads) == 1
    assert store.load("small.json", 0.5).threshold == 0.5


def test_busy_answer_is_an_error_card_not_a_500(env: Env, monkeypatch):
    monkeypatch.setattr(env.store.gate, "run", lambda fn: (_ for _ in ()).throw(ViewerBusy("busy: try again")))
    out = handle_view(env, "?graph=small.json&pruningThreshold=0.42", None, None, None)
    assert "busy" in str(out[2]) and handlers.EMPTY_FIGURE in out
