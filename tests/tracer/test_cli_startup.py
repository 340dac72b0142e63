"""`tracer --help` stays fast: building the parser imports no torch, and the lazily added options still work."""

from __future__ import annotations

import subprocess
import sys
from enum import Enum

from tracer.cli import build_parser


def test_build_parser_imports_no_torch():
    code = "import sys; from tracer.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", out


def test_transcoders_train_options_come_from_train_config():
    from transcoders.train import TrainConfig

    args = build_parser().parse_args(["transcoders", "train", "--out", "o", "--features", "7", "--no-skip"])
    assert args.func.__name__ == "run_train"
    for name, field in TrainConfig.model_fields.items():
        got = getattr(args, name)
        if name == "n_features":
            assert got == 7
        elif name in ("layers", "buffer_tokens"):  # resolved in run_train, once the model is known
            assert got is None
        elif isinstance(field.default, Enum):
            assert got == field.default.value, name
        else:
            assert got == field.default, name


def test_transcoders_eval_and_convert_options_are_added_on_use():
    from transcoders import DEFAULT_TRANSCODERS, TranscoderFormat

    ev = build_parser().parse_args(["transcoders", "eval"])
    assert (ev.func.__name__, ev.transcoders, ev.layers) == ("run_eval", DEFAULT_TRANSCODERS, None)
    cv = build_parser().parse_args(["transcoders", "convert", "a", "b", "--to", TranscoderFormat.CIRCUIT_TRACER.value])
    assert (cv.func.__name__, str(cv.src), str(cv.dst), cv.to) == ("run_convert", "a", "b", "circuit-tracer")
