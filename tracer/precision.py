"""`--dtype` and `--device`, shared by the commands that load a model (trace, intervene, features build, transcoders
train).

1. Parser: `add_precision_args` adds both options (no torch import: `tracer --help` stays fast).
2. Resolve: `resolve_precision(args)` -> Precision(dtype, device), checked before any loading: an unknown device
   string, or CUDA on a machine without it, is one line.
The model runs its forward pass in `dtype`; attribution accumulates in fp32 (tracer.record.Record.upcast and the
backward's casts), and transcoder training keeps fp32 master weights whatever the activation storage is.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, NamedTuple

from tracer.errors import ConfigError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class Precision(NamedTuple):
    dtype: torch.dtype
    device: torch.device


def add_precision_args(p: argparse.ArgumentParser, default_dtype: str = "fp32", flag: str = "--dtype") -> None:
    """`flag` names the dtype option (`transcoders train` has --dtype for the saved weights: --model-dtype)."""
    p.add_argument(flag, dest="model_dtype", choices=list(DTYPE_NAMES), default=default_dtype,
                   help="dtype of the model's weights and forward pass (bf16/fp16: half the memory; sums in fp32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def resolve_precision(args: argparse.Namespace) -> Precision:
    import torch

    name = str(getattr(args, "device", "cpu") or "cpu")
    if not _DEVICE.match(name):
        raise ConfigError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available here (torch.cuda.is_available() is False)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    dtype = getattr(torch, DTYPE_NAMES[getattr(args, "model_dtype", "fp32") or "fp32"])
    return Precision(dtype, device)
