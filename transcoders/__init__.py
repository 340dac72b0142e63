"""Cross-layer and per-layer transcoders: modules, file formats, trainer and evaluator.

The public names are re-exported lazily (PEP 562 `__getattr__`): they import torch, and `tracer --help` imports this
package (through transcoders.cli) without needing any of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transcoders.clt import LazyRows, Transcoder
    from transcoders.config import ActivationKind, DType, TranscoderConfig, TranscoderKind
    from transcoders.formats import (
        DEFAULT_TRANSCODERS,
        TranscoderFormat,
        detect_format,
        load_transcoders,
        save_transcoders,
    )

_HOME = {
    "LazyRows": "transcoders.clt", "Transcoder": "transcoders.clt",
    "ActivationKind": "transcoders.config", "DType": "transcoders.config", "TranscoderConfig": "transcoders.config",
    "TranscoderKind": "transcoders.config",
    "DEFAULT_TRANSCODERS": "transcoders.formats", "TranscoderFormat": "transcoders.formats",
    "detect_format": "transcoders.formats", "load_transcoders": "transcoders.formats",
    "save_transcoders": "transcoders.formats",
}  # fmt: skip

__all__ = [
    "DEFAULT_TRANSCODERS", "ActivationKind", "DType", "LazyRows", "Transcoder", "TranscoderConfig",
    "TranscoderFormat", "TranscoderKind", "detect_format", "load_transcoders", "save_transcoders",
]  # fmt: skip
assert sorted(__all__) == sorted(_HOME)


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
