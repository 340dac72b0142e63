"""Sidecar v2 (CSR) contents: round trip, float16 values, size per edge, lazy (memory-mapped) reads, v1 migration,
and bad sidecars (truncated, indices out of range, sizes that do not add up) as one-line errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.tracer.graph_fixtures import random_attribution
from tracer.errors import GraphFileError
from tracer.graphfile import build_graph_file, load_attribution, save_graph, sidecar_path
from tracer.prune import prune
from tracer.schema import Identity
from tracer.sidecar import FORMAT_V1, sidecar_tensors

ID = Identity(name="m", content_hash="h", kind="gpt2")


def saved(tmp_path, attr, **kw):
    g = build_graph_file(attr, prune(attr), prompt="p", model=ID, transcoders=ID, settings={})
    return save_graph(tmp_path / "g.json", g, attr, **kw)


def mapped_file(t: torch.Tensor) -> str | None:
    """The file whose memory mapping holds t's data (Linux /proc/self/maps), None if anonymous memory."""
    ptr = t.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= ptr < hi:
                return parts[5] if len(parts) > 5 and parts[5].startswith("/") else None
    return None


def write_raw(path, attr, change=None, drop=(), fmt=None):
    """A sidecar written by hand from sidecar_tensors, after `change(tensors)` (for bad files)."""
    t, meta = sidecar_tensors(attr)
    if change:
        change(t)
    for k in drop:
        del t[k]
    if fmt:
        meta["format"] = fmt
    save_file(t, str(path), metadata=meta)
    return path


def test_v2_round_trip_is_csr_and_lazy(tmp_path):
    attr = random_attribution(n_layers=3, n_pos=6, seed=0)
    a2 = load_attribution(saved(tmp_path, attr))
    adj = a2.adjacency
    assert adj.col.dtype == torch.int32 and adj.crow.dtype == torch.int64 and adj.values.dtype == torch.float32
    assert torch.equal(adj.to_dense(), attr.adjacency.to_dense())
    side = sidecar_path(tmp_path / "g.json")
    assert mapped_file(adj.values) == mapped_file(adj.col) == str(side.resolve())  # memory-mapped, not read
    assert torch.equal(prune(a2).node_mask, prune(attr).node_mask)


def test_bytes_per_edge_and_fp16(tmp_path):
    attr = random_attribution(n_layers=6, n_pos=24, max_per_cell=6, density=0.9, seed=1)
    nnz = attr.adjacency.nnz
    assert nnz > 20_000  # large enough that the fixed parts are small
    side = sidecar_path(saved(tmp_path, attr))
    fp32 = side.stat().st_size / nnz
    a16 = load_attribution(save_graph(tmp_path / "h.json", build_graph_file(
        attr, prune(attr), prompt="p", model=ID, transcoders=ID, settings={}), attr, values_dtype=torch.float16))
    fp16 = sidecar_path(tmp_path / "h.json").stat().st_size / nnz
    t, _ = sidecar_tensors(attr)
    rest = sum(v.numel() * v.element_size() for k, v in t.items() if k not in ("adjacency.col", "adjacency.values"))
    fixed = (rest + 8192) / nnz  # row pointers, layout, node values, header
    assert 8 <= fp32 <= 8 + fixed and 6 <= fp16 <= 6 + fixed  # int32 column + float32 (float16) value per edge
    assert a16.adjacency.values.dtype == torch.float16
    want = attr.adjacency.values.to(torch.float16)
    assert torch.equal(a16.adjacency.values, want) and torch.equal(a16.adjacency.col, attr.adjacency.col)
    g = build_graph_file(a16, prune(a16), prompt="p", model=ID, transcoders=ID, settings={})
    again = load_attribution(save_graph(tmp_path / "copy.json", g, a16))  # re-saved (tracer prune -o): stays fp16
    assert again.adjacency.values.dtype == torch.float16


def test_v1_sidecar_migrates(tmp_path):
    attr = random_attribution(n_layers=3, n_pos=5, seed=2)
    coo = attr.adjacency.to_sparse_coo()

    def to_v1(t):
        for k in ("adjacency.crow", "adjacency.col", "adjacency.values"):
            del t[k]
        t |= {"adjacency.indices": coo.indices(), "adjacency.values": coo.values(),
              "adjacency.shape": torch.tensor(list(coo.shape))}  # fmt: skip

    a1 = load_attribution(write_raw(tmp_path / "old.adjacency.safetensors", attr, to_v1, fmt=FORMAT_V1))
    assert torch.equal(a1.adjacency.to_dense(), attr.adjacency.to_dense())
    assert a1.adjacency.col.dtype == torch.int32
    assert torch.equal(prune(a1).node_mask, prune(attr).node_mask)


def test_truncated_sidecar_is_one_line(tmp_path):
    attr = random_attribution(n_layers=3, n_pos=6, seed=3)
    side = sidecar_path(saved(tmp_path, attr))
    data = side.read_bytes()
    side.write_bytes(data[: len(data) - 100])
    for path in (side, tmp_path / "g.json"):
        with pytest.raises(GraphFileError) as e:
            load_attribution(path)
        assert "\n" not in str(e.value) and side.name in str(e.value)


def _set(key, fn):
    def change(t):
        t[key] = fn(t[key])
    return change


@pytest.mark.parametrize(("change", "match"), [
    (_set("adjacency.col", lambda c: torch.cat([c[:-1], torch.tensor([10**6], dtype=torch.int32)])), "out of range"),
    (_set("adjacency.col", lambda c: torch.cat([c[:-1], torch.tensor([-1], dtype=torch.int32)])), "out of range"),
    (_set("adjacency.crow", lambda r: torch.cat([r[:-1], torch.tensor([10**12])])), "row pointers"),
    (_set("adjacency.crow", lambda r: r.flip(0)), "row pointers"),
    (_set("adjacency.crow", lambda r: r[:-1]), "shape"),
    (_set("adjacency.col", lambda c: c.long()), "dtypes"),
    (_set("layout.n_layers", lambda n: torch.tensor([10**9])), "n_layers"),
])  # fmt: skip
def test_bad_v2_sidecars(tmp_path, change, match):
    attr = random_attribution(n_layers=3, n_pos=5, seed=4)
    path = write_raw(tmp_path / "bad.adjacency.safetensors", attr, change)
    with pytest.raises(GraphFileError, match=match) as e:
        load_attribution(path)
    assert "\n" not in str(e.value) and "bad.adjacency.safetensors" in str(e.value)


def test_missing_tensor_and_unknown_format(tmp_path):
    attr = random_attribution(seed=5)
    with pytest.raises(GraphFileError, match="missing"):
        load_attribution(write_raw(tmp_path / "a.adjacency.safetensors", attr, drop=["adjacency.col"]))
    with pytest.raises(GraphFileError, match="not a clt-tracer adjacency sidecar"):
        load_attribution(write_raw(tmp_path / "b.adjacency.safetensors", attr, fmt="clt-tracer adjacency v9"))
