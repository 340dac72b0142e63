"""A graph and its sidecar are one unit: a sidecar whose size (hash equal) or content hash differs from what the
JSON records is refused with one line, by every reader of sidecars (load_attribution, `tracer prune`, `tracer
export`, `tracer validate`; the viewer in tests/viewer/test_data.py), from the sidecar's header alone."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

import tracer.graphfile as gf
import tracer.pair
from tests.tracer.graph_fixtures import random_attribution
from tracer.cli import main
from tracer.errors import GraphFileError
from tracer.graphfile import build_graph_file, load_attribution, load_graph, save_graph, sidecar_path
from tracer.prune import prune
from tracer.schema import Identity

ID = Identity(name="tiny", content_hash="0", kind="clt")


def saved(tmp_path: Path) -> Path:
    attr = random_attribution(n_layers=3, n_pos=5, seed=7)
    g = build_graph_file(attr, prune(attr), prompt="hi there", model=ID, transcoders=ID, settings={})
    return save_graph(tmp_path / "g.json", g, attr)


def record(path: Path, **changes) -> None:
    """Rewrite the pair record of the JSON (the sidecar untouched)."""
    g = load_graph(path)
    for k, v in changes.items():
        setattr(g.metadata, k, v)
    save_graph(path, g)


def stale(path: Path, how: str) -> None:
    side = sidecar_path(path)
    size = side.stat().st_size
    if how == "json-size":  # the JSON records another size, the same hash
        record(path, adjacency_size=size + 8)
    elif how == "json-hash":  # the JSON records another hash, the same size
        record(path, adjacency_hash="0" * 32)
    elif how == "sidecar-grown":  # bytes appended after the write: header (and its hash) unchanged
        side.write_bytes(side.read_bytes() + b"\0" * 8)
    else:  # "sidecar-cut": the tail lost, header unchanged
        side.write_bytes(side.read_bytes()[:-8])


HOWS = ["json-size", "json-hash", "sidecar-grown", "sidecar-cut"]


def test_matching_pair_records_the_sidecars_size_and_hash(tmp_path: Path):
    path = saved(tmp_path)
    m, side = load_graph(path).metadata, sidecar_path(path)
    assert (m.adjacency_size, m.adjacency_hash) == (side.stat().st_size, tracer.pair.sidecar_hash(side))
    assert load_attribution(path).layout.n_nodes > 0


@pytest.mark.parametrize("how", HOWS)
def test_stale_pair_is_refused_with_one_line(tmp_path: Path, how: str):
    path = saved(tmp_path)
    size = sidecar_path(path).stat().st_size
    stale(path, how)
    with pytest.raises(GraphFileError) as e:
        load_attribution(path)
    msg = str(e.value)
    assert "\n" not in msg and "g.adjacency.safetensors does not belong to g.json" in msg
    if how == "json-hash":
        assert f"!= recorded {'0' * 32}" in msg
    else:  # the hash matches: the size gives it away
        now = sidecar_path(path).stat().st_size
        recorded = size + 8 if how == "json-size" else size
        assert f"size {now} != recorded {recorded} bytes" in msg


class CountingFile:
    def __init__(self, f, counts: dict[str, int]):
        self.f, self.counts = f, counts

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.counts[self.f.name] = self.counts.get(self.f.name, 0) + len(data)
        return data


@pytest.mark.parametrize("how", HOWS)
def test_stale_pair_is_refused_from_the_header_alone(tmp_path: Path, monkeypatch, how: str):
    """No tensor is read (safe_open fails if called) and the bytes read from the sidecar are its 8-byte length
    plus its JSON header, a small part of the file."""
    path = saved(tmp_path)
    stale(path, how)
    side = sidecar_path(path)
    header_len = struct.unpack("<Q", side.read_bytes()[:8])[0]
    counts: dict[str, int] = {}

    def no_tensors(*a, **k):
        raise AssertionError("the sidecar's tensors were opened before the pair was checked")

    def counting_open(file, mode="r", *a, **k):
        return CountingFile(open(file, mode, *a, **k), counts)  # noqa: SIM115 (the wrapper closes it)

    monkeypatch.setattr(gf, "safe_open", no_tensors)
    monkeypatch.setattr(tracer.pair, "open", counting_open, raising=False)  # where the header is read
    with pytest.raises(GraphFileError, match="does not belong to g.json"):
        load_attribution(path)
    assert counts == {str(side): 8 + header_len}
    assert 8 + header_len < side.stat().st_size // 2


READERS = {
    "prune": lambda g, tmp: ["prune", str(g), "-o", str(tmp / "out" / "p.json")],
    "export": lambda g, tmp: ["export", str(g), "--to", "neuronpedia", "-o", str(tmp / "out")],
    "validate": lambda g, tmp: ["validate", str(g), "-o", str(tmp / "out" / "r.json")],
}


@pytest.mark.parametrize("how", ["json-size", "sidecar-grown", "json-hash"])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_cli_readers_refuse_a_stale_pair(tmp_path: Path, monkeypatch, capsys, reader: str, how: str):
    """Each command that reads the sidecar stops at the pair check: one line, exit 2, nothing written (validate
    before it loads any model)."""
    path = saved(tmp_path)
    stale(path, how)
    monkeypatch.setattr(gf, "safe_open", lambda *a, **k: pytest.fail("tensors read"))
    monkeypatch.setattr("tracer.models.load_model", lambda *a, **k: pytest.fail("model loaded"))
    capsys.readouterr()
    assert main(READERS[reader](path, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "g.adjacency.safetensors does not belong to g.json" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
