"""tracer.pair: the sidecar written in a background thread while the caller goes on, its failures raised at finish,
and nothing left or changed on disk when the save fails or is cancelled."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import tracer.pair as pair
from tests.tracer.test_graphfile import make_graph
from tracer.errors import OutputError
from tracer.graphfile import load_attribution, load_graph
from tracer.pair import save_graph, sidecar_path, start_save


def contents(side: Path) -> tuple[dict, dict[str, list]]:
    """A sidecar's metadata and tensors (safetensors writes the metadata keys in no fixed order)."""
    with safe_open(side, "pt") as f:
        return f.metadata(), {k: f.get_tensor(k).tolist() for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_sidecar_is_written_while_the_caller_goes_on(tmp_path, monkeypatch):
    """The writer waits for an event the caller sets after start_save returns: a save that wrote in the caller's
    thread would time out there; the pair then equals a plain save_graph's."""
    attr, _, g = make_graph()
    went_on, seen = threading.Event(), []
    real = pair.save_file

    def waiting(*a, **k):
        seen.append(went_on.wait(timeout=20))
        return real(*a, **k)

    monkeypatch.setattr(pair, "save_file", waiting)
    pending = start_save(tmp_path / "a.json", attr)
    went_on.set()  # the caller's work (pruning, the graph file) would run here
    path = pending.finish(g)
    assert seen == [True]
    monkeypatch.setattr(pair, "save_file", real)
    other = save_graph(tmp_path / "b.json", g, attr)
    assert contents(sidecar_path(path)) == contents(sidecar_path(other))
    assert load_graph(path).metadata.adjacency_hash == load_graph(other).metadata.adjacency_hash
    assert torch.equal(load_attribution(path).adjacency.to_dense(), attr.adjacency.to_dense())


def test_writer_failure_is_raised_at_finish_and_leaves_the_old_pair(tmp_path, monkeypatch):
    attr, _, g = make_graph()
    save_graph(tmp_path / "g.json", g, attr)
    before = snapshot(tmp_path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pair, "save_file", full)
    pending = start_save(tmp_path / "g.json", make_graph(seed=1)[0])
    with pytest.raises(OutputError, match=r"^cannot write .*g\.json: No space left on device$"):
        pending.finish(make_graph(seed=1)[2])
    assert snapshot(tmp_path) == before  # no temp file, the old pair unchanged


def test_cancel_waits_for_the_writer_and_removes_its_temp_files(tmp_path):
    """A failure between start and finish (e.g. in pruning) cancels: nothing published, nothing left."""
    attr, _, g = make_graph()
    save_graph(tmp_path / "g.json", g, attr)
    before = snapshot(tmp_path)
    pending = start_save(tmp_path / "g.json", make_graph(seed=2)[0])
    pending.cancel()
    assert snapshot(tmp_path) == before
    assert start_save(tmp_path / "h.json", None).finish(g).exists()  # no attribution: the JSON alone
    assert not sidecar_path(tmp_path / "h.json").exists()
