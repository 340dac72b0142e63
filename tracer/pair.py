"""A graph file and its sidecar as one unit: writing the pair, recovering after a killed write, the sidecar's hash.

Saving (tracer.graphfile's module docstring has the format):
1. check the output path, then remove or finish what a killed save left (`recover_pair`);
2. write the sidecar to a temp file in a temp folder of our own, recording a hash of its tensors (sha256, 128
   bits) in its own metadata (`content_hash`). `start_save` runs this step in a background thread: it is disk I/O
   (safetensors and hashlib release the GIL), so `tracer trace` prunes and builds the graph file meanwhile, and the
   edges are read-only by then;
3. `PendingSave.finish(graph)`: wait for step 2 (its error, if any, is raised here), then write the JSON, which
   records the sidecar's name, hash and size, to a temp file;
4. rename the sidecar, then the JSON, into place.
A failure or interrupt before 4 removes the temp files (`cancel`); a kill leaves them, and the old pair, for
step 1 of the next save. Between the renames the new sidecar sits beside the old JSON with the new JSON pending:
recover_pair publishes that pending JSON (its hash matches), so the next run sees the new pair.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import threading
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from tracer.errors import GraphFileError, OutputError
from tracer.io import atomic_write_text, check_output, new_temp, new_temp_dir, publish, remove_stale_temps, stale_temps
from tracer.result import Attribution
from tracer.schema import GraphFile
from tracer.sidecar import sidecar_tensors

SIDECAR_SUFFIX = ".adjacency.safetensors"
HASH_KEY = "content_hash"  # sidecar metadata: a 128-bit hash of its tensors, recorded at write time
MAX_HEADER = 100 << 20  # a safetensors header larger than this is corrupt


def sidecar_path(path: str | Path) -> Path:
    """`NAME.json` -> `NAME.adjacency.safetensors` (beside it)."""
    return Path(path).with_suffix(SIDECAR_SUFFIX)


class PendingSave:
    """A save of graph JSON `path` with steps 1-2 started (module docstring); `finish` or `cancel` it."""

    def __init__(self, path: str | Path, attribution: Attribution | None, values_dtype: torch.dtype | None) -> None:
        """Steps 1-2 (2 in a thread). attribution None: the JSON alone will be written. values_dtype: the sidecar's
        edge values, float32 or float16 (--sidecar-dtype; None: float16 if they are, else float32)."""
        self.path = Path(path)
        check_output(self.path, "graph file")
        recover_pair(self.path)  # 1.
        self._dir: Path | None = None
        self._outcome: list[str | BaseException] = []  # the sidecar's hash, or what the writer raised
        self._thread: threading.Thread | None = None
        if attribution is not None:
            side = sidecar_path(self.path)
            self._dir = new_temp_dir(side)  # safetensors makes its own temp file: in this folder, owned by our pid
            self._thread = threading.Thread(target=self._write, args=(attribution, values_dtype), daemon=True)
            self._thread.start()

    def _write(self, attribution: Attribution, values_dtype: torch.dtype | None) -> None:
        try:  # 2.
            assert self._dir is not None
            self._outcome.append(_save_sidecar(self._dir / sidecar_path(self.path).name, attribution, values_dtype))
        except BaseException as e:  # raised in the caller's thread by finish
            self._outcome.append(e)

    def finish(self, graph: GraphFile) -> Path:
        """Steps 3-4; returns the JSON path. `graph` is not modified (the written copy records the sidecar's name,
        hash and size)."""
        # only the metadata is changed below: copy it, share the nodes and edges (a deep copy: ~0.1 s at 64 tokens)
        graph = graph.model_copy(update={"metadata": graph.metadata.model_copy()})
        if self._thread is None:
            atomic_write_text(self.path, graph.model_dump_json())
            return self.path
        assert self._dir is not None
        side = sidecar_path(self.path)
        side_tmp, json_tmp = self._dir / side.name, None
        try:
            self._thread.join()
            if isinstance(self._outcome[0], BaseException):
                raise self._outcome[0]
            m = graph.metadata
            m.adjacency_file, m.adjacency_hash, m.adjacency_size = side.name, self._outcome[0], side_tmp.stat().st_size
            json_tmp = new_temp(self.path)  # 3.
            json_tmp.write_text(graph.model_dump_json(), encoding="utf-8")
        except BaseException as e:
            self.cancel()
            if json_tmp is not None:
                json_tmp.unlink(missing_ok=True)
            if isinstance(e, OSError) and not isinstance(e, OutputError):
                raise OutputError(f"cannot write {self.path}: {e.strerror or e}") from None
            raise
        publish(side_tmp, side)  # 4.
        publish(json_tmp, self.path)
        shutil.rmtree(self._dir, ignore_errors=True)
        return self.path

    def cancel(self) -> None:
        """Wait for the sidecar writer, then remove its temp folder (nothing is published)."""
        if self._thread is not None:
            self._thread.join()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def start_save(path: str | Path, attribution: Attribution | None, values_dtype: torch.dtype | None = None,
               ) -> PendingSave:  # fmt: skip
    """Steps 1-2 of saving `path` and its sidecar (PendingSave); the sidecar is written while the caller goes on."""
    return PendingSave(path, attribution, values_dtype)


def save_graph(path: str | Path, graph: GraphFile, attribution: Attribution | None = None,
               values_dtype: torch.dtype | None = None) -> Path:  # fmt: skip
    """Write `path` (JSON) and, given the unpruned attribution, its sidecar, as one unit (steps 1-4); without an
    attribution the JSON alone (its pair record kept). Returns the JSON path; `graph` is not modified."""
    return start_save(path, attribution, values_dtype).finish(graph)


def recover_pair(path: str | Path) -> None:
    """Saving step 1: after a killed save_graph, publish its pending JSON if the sidecar in place is the one it
    records (the kill fell between the two renames), then remove every leftover temp file of the pair."""
    path = Path(path)
    side = sidecar_path(path)
    pending = stale_temps(path)
    if pending and side.exists():
        try:
            have = sidecar_hash(side)
        except GraphFileError:
            have = None
        for q in reversed(pending):  # newest first
            try:
                meta = json.loads(q.read_text(encoding="utf-8")).get("metadata", {})
            except (OSError, ValueError, RecursionError, AttributeError):
                continue
            if have is not None and isinstance(meta, dict) and meta.get("adjacency_hash") == have:
                publish(q, path)
                break
    remove_stale_temps(path)
    remove_stale_temps(side)


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order, cut to 128 bits (sha256 runs at twice
    blake2b's speed on CPUs with SHA extensions; older pairs recorded blake2b-128: hashes are only ever compared
    as recorded strings, never recomputed on load)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(tensors[k].shape)}|".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().data)
    return h.hexdigest()[:32]


def sidecar_hash(side: Path) -> str | None:
    """The content hash a sidecar records in its header (None for sidecars written before hashes); reads the
    safetensors header only, never the tensors."""
    try:
        with open(side, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < n <= MAX_HEADER:
                raise GraphFileError(f"corrupt adjacency sidecar {side}: bad header length")
            header = json.loads(f.read(n))
    except (OSError, ValueError, RecursionError) as e:
        raise GraphFileError(f"corrupt adjacency sidecar {side}: {e}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    value = meta.get(HASH_KEY) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def _save_sidecar(path: Path, a: Attribution, values_dtype: torch.dtype | None = None) -> str:
    """Write the sidecar to `path` (a temp file); returns its content hash (also stored in its metadata)."""
    tensors, meta = sidecar_tensors(a, values_dtype)
    digest = tensor_hash(tensors)
    meta[HASH_KEY] = digest
    try:
        save_file(tensors, str(path), metadata=meta)
    except SafetensorError as e:
        raise OutputError(f"cannot write {path}: {e}") from None
    return digest
