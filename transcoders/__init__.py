"""Cross-layer and per-layer transcoders: modules, file formats, trainer and evaluator."""

from transcoders.clt import LazyRows, Transcoder
from transcoders.config import ActivationKind, DType, TranscoderConfig, TranscoderKind
from transcoders.formats import DEFAULT_TRANSCODERS, TranscoderFormat, detect_format, load_transcoders, save_transcoders

__all__ = [
    "DEFAULT_TRANSCODERS", "ActivationKind", "DType", "LazyRows", "Transcoder", "TranscoderConfig",
    "TranscoderFormat", "TranscoderKind", "detect_format", "load_transcoders", "save_transcoders",
]  # fmt: skip
