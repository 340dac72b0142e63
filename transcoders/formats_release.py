"""Per-layer transcoder files of published releases, read into circuit-tracer's per-layer layout.

One reader per file kind, chosen by the file itself (not by the repository's name):
1. Gemma Scope (v1) `params.npz`: `W_enc` [D, F] (transposed), `W_dec` [F, D], `b_enc` [F], `b_dec` [D],
   `threshold` [F] (JumpReLU). Read with `numpy.load(allow_pickle=False)`: a pickled member is refused. `W_dec` is
   memory-mapped when stored uncompressed (as `numpy.savez` writes it), else read whole (`numpy.savez_compressed`).
2. Gemma Scope 2 `*.safetensors` with lower-case `w_enc` [D, F], `w_dec` [F, D], `b_enc`, `b_dec`, `threshold`,
   optional `affine_skip_connection` [D, D] (the skip is x @ A, i.e. W_skip = Aᵀ in our x @ W_skipᵀ convention).
3. circuit-tracer `layer_{i}.safetensors`: `W_enc` [F, D], `W_dec` [F, D], `b_enc`, `b_dec`, optional
   `activation_function.threshold` and `W_skip`.
Each returns the encoder-side tensors under our names (W_enc [F, D], b_enc, b_dec, theta, W_skip) and the decoder
[F, D] (a tensor, or LazyRows when lazy). Only the tensors needed are read (safetensors via safe_open).
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from tracer.errors import TranscoderLoadError
from transcoders.clt import LazyRows


class LayerFile(NamedTuple):
    enc: dict[str, torch.Tensor]  # W_enc [F, D], b_enc [F], b_dec [D], optional theta [F], W_skip [D, D]
    dec: torch.Tensor | LazyRows  # [F, D]


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), for one-line errors."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _lazy_npy_member(path: Path, member: str) -> LazyRows | None:
    """LazyRows over an uncompressed .npy member of a zip (None if compressed or not a plain C-order array)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
        if head[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        data_at = f.tell()
    if fortran or dtype.hasobject or dtype.kind not in "f" or dtype.itemsize not in (2, 4, 8):
        return None
    return LazyRows.at(path, member.removesuffix(".npy"), tuple(shape), dtype.newbyteorder("="), data_at)


def read_gemma_scope_npz(path: Path, lazy: bool) -> LayerFile:
    """Gemma Scope v1 params.npz (step 1 of the module docstring)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            need = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
            if need - names:
                raise TranscoderLoadError(f"{path} lacks {', '.join(sorted(need - names))} (a Gemma Scope params.npz "
                                          f"has {', '.join(sorted(need))})")  # fmt: skip
            enc = {"W_enc": torch.from_numpy(np.ascontiguousarray(z["W_enc"].T)),
                   "b_enc": torch.from_numpy(z["b_enc"]), "b_dec": torch.from_numpy(z["b_dec"]),
                   "theta": torch.from_numpy(z["threshold"])}  # fmt: skip
            dec = _lazy_npy_member(path, "W_dec.npy") if lazy else None
            if dec is None:  # compressed (or not mappable): read whole, behind LazyRows' interface when lazy
                dec = LazyRows.in_memory(path, "W_dec", z["W_dec"]) if lazy else torch.from_numpy(z["W_dec"])
    except TranscoderLoadError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickle" in str(e).lower():
            raise TranscoderLoadError(f"{path} holds pickled objects; refusing to load it (allow_pickle=False)") \
                from None
        raise TranscoderLoadError(f"corrupt transcoder file {path}: {first_line(e)}") from None
    except FileNotFoundError:
        raise TranscoderLoadError(f"missing transcoder file {path}") from None
    except (OSError, zipfile.BadZipFile, KeyError, EOFError) as e:
        raise TranscoderLoadError(f"corrupt transcoder file {path}: {first_line(e)}") from None
    return LayerFile(enc, dec)


def read_safetensors(path: Path, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file except the names in `skip` (those are not read); a missing or corrupt
    file -> TranscoderLoadError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k not in skip}  # noqa: SIM118  (safe_open has no iter)
    except FileNotFoundError:
        raise TranscoderLoadError(f"missing transcoder file {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise TranscoderLoadError(f"corrupt transcoder file {path}: {first_line(e)}") from None


def lazy_rows(path: Path, name: str) -> LazyRows:
    """Row-sliceable view of tensor `name` in a safetensors file (read on demand); errors name the file."""
    try:
        return LazyRows(path, name)
    except FileNotFoundError:
        raise TranscoderLoadError(f"missing transcoder file {path}") from None
    except (OSError, ValueError, KeyError, struct.error) as e:
        raise TranscoderLoadError(f"corrupt transcoder file {path}: {first_line(e)}") from None


def _need(raw: dict[str, torch.Tensor], names: tuple[str, ...], path: Path) -> None:
    missing = [n for n in names if n not in raw]
    if missing:
        raise TranscoderLoadError(f"{path} lacks the tensor {missing[0]}")


def read_safetensors_layer(path: Path, lazy: bool) -> LayerFile:
    """A Gemma Scope 2 (lower-case w_enc) or circuit-tracer per-layer safetensors file (steps 2-3)."""
    gs2 = _header_has(path, "w_enc")
    dec_name = "w_dec" if gs2 else "W_dec"
    raw = read_safetensors(path, {dec_name} if lazy else set())
    if gs2:
        _need(raw, ("w_enc", "b_enc", "b_dec", "threshold"), path)
        enc = {"W_enc": raw["w_enc"].T.contiguous(), "b_enc": raw["b_enc"], "b_dec": raw["b_dec"],
               "theta": raw["threshold"]}  # fmt: skip
        if "affine_skip_connection" in raw:
            enc["W_skip"] = raw["affine_skip_connection"].T.contiguous()
    else:
        _need(raw, ("W_enc", "b_enc", "b_dec"), path)
        enc = {"W_enc": raw["W_enc"], "b_enc": raw["b_enc"], "b_dec": raw["b_dec"]}
        if "activation_function.threshold" in raw:
            enc["theta"] = raw["activation_function.threshold"]
        if "W_skip" in raw:
            enc["W_skip"] = raw["W_skip"]
    if lazy:
        return LayerFile(enc, lazy_rows(path, dec_name))
    _need(raw, (dec_name,), path)
    return LayerFile(enc, raw[dec_name])


def _header_has(path: Path, name: str) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            return name in f.keys()  # noqa: SIM118
    except FileNotFoundError:
        raise TranscoderLoadError(f"missing transcoder file {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise TranscoderLoadError(f"corrupt transcoder file {path}: {first_line(e)}") from None


def read_layer_file(path: Path, lazy: bool) -> LayerFile:
    """Dispatch on the file: .npz -> Gemma Scope v1, else safetensors (Gemma Scope 2 or circuit-tracer)."""
    if path.suffix == ".npz":
        return read_gemma_scope_npz(path, lazy)
    return read_safetensors_layer(path, lazy)
