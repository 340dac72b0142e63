"""A write that fails halfway: `fail_halfway(monkeypatch)` makes tracer.io's file writes put down the first half
of their bytes and then raise ENOSPC (a full disk), as a crash in the middle of a write would leave them."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import tracer.io


class HalfWriter:
    """Wraps a real file: write() writes half of `data`, flushes it to disk, then raises ENOSPC."""

    def __init__(self, f, log: list[tuple[Path, int]]):
        self.f, self.log = f, log

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data: bytes) -> int:
        half = len(data) // 2
        self.f.write(data[:half])
        self.f.flush()
        self.log.append((Path(self.f.name), os.path.getsize(self.f.name)))  # the partial temp file, as it stood
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


def fail_halfway(monkeypatch: pytest.MonkeyPatch, skip: int = 0) -> list[tuple[Path, int]]:
    """From the (skip+1)-th file tracer.io opens for writing on, each write fails halfway. Returns the log of
    (partial file, its size when the write failed)."""
    log: list[tuple[Path, int]] = []
    opened = [0]

    def fake_open(file, mode="r", *args, **kw):
        f = open(file, mode, *args, **kw)  # noqa: SIM115 (closed by the wrapper, or returned as is)
        if "w" not in mode:
            return f
        opened[0] += 1
        return f if opened[0] <= skip else HalfWriter(f, log)

    monkeypatch.setattr(tracer.io, "open", fake_open, raising=False)
    return log


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative name -> bytes), temp files included."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
