"""Finite checks where data enters the tracer: weights at load, recorded activations, sidecars.

NaN or Inf in any of them makes every feature active and every series diverge, so each is checked once, cheaply:
1. scan: a float tensor is read in chunks (a bool mask of one chunk at a time, never of the whole tensor);
2. report: the first non-finite entry names the tensor, its index and value, in one TracerError line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from tracer.errors import NonFiniteError, TracerError

CHUNK = 1 << 22  # elements scanned at a time (16 MiB of fp32)


def first_nonfinite(t: torch.Tensor) -> tuple[tuple[int, ...], float | complex] | None:
    """(index, value) of the first NaN/Inf entry of `t`, or None when all are finite (or `t` is not floating)."""
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return None
    flat = t.detach().reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        part = flat[start : start + CHUNK]
        if bool(torch.isfinite(part).all()):
            continue
        i = start + int((~torch.isfinite(part)).nonzero()[0, 0])
        index = tuple(int(x) for x in torch.unravel_index(torch.tensor(i), t.shape)) if t.dim() else ()
        return index, flat[i].item()  # a complex value stays complex (float() of it raises)
    return None


def check_finite(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    where: str,
    error: type[TracerError] = NonFiniteError,
) -> None:
    """Raise `error` naming the first tensor (in order) that holds NaN or Inf: `where: tensor NAME has ...`."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, t in items:
        if (bad := first_nonfinite(t)) is not None:
            index, value = bad
            raise error(f"{where}: tensor {name} has a non-finite value ({value} at index {list(index)}); "
                        "NaN/Inf would make the trace meaningless")  # fmt: skip
