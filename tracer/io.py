"""Atomic file writes: write a temp file in the target directory, then rename it over the target.

A crash mid-write therefore leaves either the old file or the new one, never half of one.
1. check: `check_output` validates an output path before any long work (not a directory, parent not a file,
   folder writable); every OSError of a write becomes one OutputError line.
2. write: the temp file `.NAME.<pid>-<random>.tmp` beside the target, fsynced, then renamed over it.
   Safetensors files are saved inside a temp folder `.NAME.<pid>-<random>.tmp/`, because safetensors itself writes
   a hidden `.tmpXXXXXX` beside its target first: a kill would otherwise strand that file where no one owns it.
3. clean: `remove_stale_temps` deletes the temp files and folders of a target left by killed runs (their pid is
   gone); every atomic write does so first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from tracer.errors import OutputError

TEMP_SUFFIX = ".tmp"


def _umask_mode() -> int:
    """0o666 minus the umask: mkstemp creates files 0600, but outputs should be as readable as a plain open()'s."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Step 1: raise OutputError unless `path` can be written as a file: not an existing directory (nor named like
    one, `DIR/`), no parent that is a file, the nearest existing folder writable. Creates nothing."""
    text, p = os.fspath(path), Path(path)
    if text.endswith(("/", os.sep)) or p.is_dir():
        raise OutputError(f"{what} {text} is a directory; give a file name")
    parent = p.parent
    while not parent.exists():
        if parent.is_symlink():
            raise OutputError(f"{what} {text}: {parent} is a dangling link")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{what} {text}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {text}: folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK) and not os.access(p.parent, os.W_OK):
        raise OutputError(f"{what} {text} is not writable")
    return p


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Step 1 for a folder output: it may exist (as a folder) or be created under a writable folder."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} is a file, not a folder")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputError(f"{what} {p} is not writable")
        return p
    check_output(p, what)
    return p


def temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """The temp files `.NAME.*.tmp` beside `path` whose writer is gone (pid not alive, or no pid in the name),
    oldest first. A live writer's temp file (another process, or this one) is not listed."""
    path = Path(path)
    prefix, out = temp_prefix(path), []
    try:
        candidates = [q for q in path.parent.iterdir() if q.name.startswith(prefix) and q.name.endswith(TEMP_SUFFIX)]
    except OSError:
        return out
    for q in candidates:
        pid_text = q.name[len(prefix) :].split("-", 1)[0]
        pid = int(pid_text) if pid_text.isdigit() else None
        if pid is None or (pid != os.getpid() and not _pid_alive(pid)):
            out.append(q)
    return sorted(out, key=lambda q: q.stat().st_mtime_ns if q.exists() else 0)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Step 3: delete stale_temps(path) (files, or temp folders with what a killed writer left in them)."""
    removed = []
    for q in stale_temps(path):
        try:
            shutil.rmtree(q) if q.is_dir() and not q.is_symlink() else q.unlink()
            removed.append(q)
        except OSError:
            pass
    return removed


def new_temp_dir(path: Path) -> Path:
    """Step 2 for writers that make their own temp files (safetensors): an empty temp folder beside `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{temp_prefix(path)}{os.getpid()}-", suffix=TEMP_SUFFIX))
    except OSError as e:
        raise OutputError(f"cannot write {path}: {_why(e)}") from None


def new_temp(path: Path) -> Path:
    """Step 2: create an empty temp file beside `path` (the folder is created if needed); OutputError if it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{temp_prefix(path)}{os.getpid()}-", suffix=TEMP_SUFFIX)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {_why(e)}") from None
    os.close(fd)
    return Path(tmp)


def publish(tmp: Path, path: Path) -> None:
    """Step 2's end: make the finished temp file readable like a plain open()'s output and rename it over path."""
    try:
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {_why(e)}") from None


@contextmanager
def _temp_beside(path: Path) -> Iterator[Path]:
    """Yield a temp path in path's directory; on success it replaces path, on error it is removed."""
    remove_stale_temps(path)
    tmp = new_temp(path)
    try:
        yield tmp
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"cannot write {path}: {_why(e)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    publish(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with _temp_beside(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    path = Path(path)
    remove_stale_temps(path)
    folder = new_temp_dir(path)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / path.name), metadata=metadata)
        publish(folder / path.name, path)
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"cannot write {path}: {_why(e)}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path
