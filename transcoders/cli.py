"""`tracer transcoders train | eval | convert`.

1. train: load the model, tokenise the corpus, run `train.train` (resumes from OUT/checkpoint.safetensors);
   every TrainConfig field is an option, its help text is the field description.
2. eval: load model and transcoders, run `metrics.evaluate`, print a table (or one JSON object with --json),
   save the NMSE/L0 plot.
3. convert: load in either format, save in the other (or the same).

Start-up: each subcommand's options are added on its first parse (`_LazyParser`), and torch-dependent modules are
imported inside the run functions: TrainConfig, the default paths and the format enum all import torch, and
`tracer --help` must not.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from tracer.errors import ConfigError
from tracer.precision import add_precision_args, resolve_precision

RENAMED = {"n_features": "features"}  # TrainConfig field -> option name, where the issue names it differently


class _LazyParser(argparse.ArgumentParser):
    """A subcommand parser that adds its options (`add_options`) the first time it parses or prints its help."""

    def __init__(self, *args: Any, add_options: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self._add_options = add_options

    def _ensure_options(self) -> None:
        if self._add_options is not None:
            add, self._add_options = self._add_options, None
            add(self)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:
        self._ensure_options()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._ensure_options()
        return super().format_help()


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from transcoders.config import INPUT_HOOKS
    from transcoders.train import TrainConfig

    for name, field in TrainConfig.model_fields.items():
        opt = "--" + RENAMED.get(name, name).replace("_", "-")
        ann = field.annotation
        if ann is bool:
            p.add_argument(opt, dest=name, action=argparse.BooleanOptionalAction, default=field.default,
                           help=field.description)  # fmt: skip
        elif isinstance(ann, type) and issubclass(ann, Enum):
            values = [h.value for h in INPUT_HOOKS] if name == "input_hook" else [e.value for e in ann]
            p.add_argument(opt, dest=name, choices=values, default=field.default.value,
                           help=f"{field.description} (default {field.default.value})")  # fmt: skip
        elif name == "layers":  # a spec such as 0-3,7, parsed once the model's layer count is known
            p.add_argument(opt, dest=name, default=None, metavar="SPEC", help=field.description)
        elif name == "buffer_tokens":  # None: the default, halved until it fits in memory (run_train)
            p.add_argument(opt, dest=name, type=int, default=None, help=f"{field.description} (default "
                           f"{field.default}, or less to fit in 40%% of the available memory)")  # fmt: skip
        else:
            p.add_argument(opt, dest=name, type=ann, default=field.default,  # type: ignore[arg-type]
                           help=f"{field.description} (default {field.default})")  # fmt: skip


def add_parser(subparsers) -> None:
    top = subparsers.add_parser("transcoders", help="train, evaluate and convert transcoders")
    sub = top.add_subparsers(dest="transcoders_command", required=True, parser_class=_LazyParser)
    sub.add_parser("train", help="train a CLT or PLT on the model's activations",
                   add_options=_train_parser).set_defaults(func=run_train)  # fmt: skip
    sub.add_parser("eval", help="per-layer NMSE/L0/dead/dense and the spliced replacement model's CE",
                   add_options=_eval_parser).set_defaults(func=run_eval)  # fmt: skip
    sub.add_parser("convert", help="convert between our format and circuit-tracer's",
                   add_options=_convert_parser).set_defaults(func=run_convert)  # fmt: skip


def _train_parser(tr: argparse.ArgumentParser) -> None:
    from tracer.models import DEFAULT_MODEL
    from transcoders.data import DEFAULT_CORPUS

    tr.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model directory or .gguf (default: bundled)")
    tr.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="text file or folder (default: bundled)")
    tr.add_argument("--out", type=Path, required=True, help="output directory (also holds the checkpoint)")
    tr.add_argument("--cache-dir", type=Path, default=None, help="store activation shards here (default: memory)")
    tr.add_argument("--init-from", type=Path, default=None, help="warm start: checkpoint.safetensors of a run")
    tr.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_precision_args(tr, flag="--model-dtype")
    tr.add_argument("--shard-features", action="store_true", help="under torchrun: each rank owns a slice of every "
                    "layer's features (default: data parallel, each rank its own token shard)")  # fmt: skip
    _add_train_options(tr)


def _eval_parser(ev: argparse.ArgumentParser) -> None:
    from tracer.models import DEFAULT_MODEL
    from transcoders.data import DEFAULT_CORPUS
    from transcoders.formats import DEFAULT_TRANSCODERS

    ev.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model directory or .gguf (default: bundled)")
    ev.add_argument("--transcoders", type=Path, default=DEFAULT_TRANSCODERS, help="transcoder directory")
    ev.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="text file or folder (default: bundled)")
    ev.add_argument("--tokens", type=int, default=1_000_000, help="tokens for the per-layer statistics")
    ev.add_argument("--ce-tokens", type=int, default=100_000, help="tokens for the spliced-model CE figures")
    ev.add_argument("--seq-len", type=int, default=128, help="sequence length incl. BOS")
    ev.add_argument("--plot", type=Path, default=Path("transcoders_eval.png"), help="where to save the plot")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ev.add_argument("--layers", default=None, metavar="SPEC", help="evaluate only these layers, e.g. 0-3,7 "
                    "(default: the layers the set has): statistics of those layers only, harvested alone, and the "
                    "splice replaces (and the zero-ablation zeroes) only their MLPs; a CLT's features of every "
                    "layer still write into them")  # fmt: skip
    ev.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")


def _convert_parser(cv: argparse.ArgumentParser) -> None:
    from transcoders.formats import TranscoderFormat

    cv.add_argument("src", type=Path, help="transcoder directory (either format)")
    cv.add_argument("dst", type=Path, help="output directory")
    cv.add_argument("--to", required=True, choices=[f.value for f in TranscoderFormat], help="output format")


def _threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)


def _world(args: argparse.Namespace):
    """The torchrun world (gloo: training tensors stay on the CPU), or None for one process."""
    from tracer.distributed import init_world

    world = init_world(backend="gloo")
    if not world.distributed and args.shard_features:
        raise ConfigError("--shard-features needs several ranks: launch with torchrun --nproc-per-node N")
    return world if world.distributed else None


def run_train(args: argparse.Namespace) -> int:
    from tracer.models import load_model
    from transcoders.data import tokenize_corpus
    from transcoders.train import TrainConfig, train

    _threads(args.threads)
    world = _world(args)  # before any long work: --shard-features without torchrun is refused here
    prec = resolve_precision(args)
    lm = load_model(args.model, dtype=prec.dtype)  # harvest in this dtype/device; training stays fp32 on the CPU
    lm.model.to(prec.device)
    fields = {k: getattr(args, k) for k in TrainConfig.model_fields}
    fields["layers"] = _layers(args.layers, lm.cfg.n_layers)
    if world is not None and fields["layers"] is not None:
        raise ConfigError("--layers is not supported under torchrun yet: train the subset in one process")
    fields["buffer_tokens"] = _buffer_tokens(args, lm.model, fields["layers"])
    try:
        cfg = TrainConfig(**fields)
    except ValueError as e:
        raise ConfigError(f"invalid training settings: {str(e).splitlines()[-1].strip()}") from None
    if lm.tokenizer is None:
        raise ConfigError(f"model {args.model} has no tokenizer; training needs one to read the corpus")
    stream = tokenize_corpus(lm.tokenizer, args.corpus, (cfg.data_tokens or cfg.tokens) + cfg.buffer_tokens)
    want = cfg.data_tokens or cfg.tokens
    _warn_short_corpus(len(stream), want, args.corpus, f"--data-tokens {len(stream)} to say so")
    if world is not None:  # torchrun: transcoders.distributed
        from transcoders.distributed import train_distributed

        res = train_distributed(lm.model, stream, cfg, args.out, world, lm.name, lm.content_hash, args.cache_dir,
                                args.shard_features, progress=not args.no_progress)  # fmt: skip
        world.close()
        if not world.is_main:
            return 0
    else:
        res = train(
            lm.model, stream, cfg, args.out, lm.name, lm.content_hash, args.cache_dir, progress=not args.no_progress
        )
    assert res is not None
    print(f"saved {args.out}: {res.steps} steps, {res.tokens_per_s:,.0f} tokens/s, "
          f"NMSE {res.final['nmse']:.3f}, L0 {res.final['l0']:.1f}, dead {res.final['dead']:.1%}")  # fmt: skip
    return 0


def _layers(spec: str | None, n_layers: int) -> tuple[int, ...] | None:
    """--layers as sorted layer indices; None when absent or naming every layer (the default run, unchanged)."""
    from transcoders.layers import parse_layers

    if spec is None:
        return None
    layers = parse_layers(spec, n_layers)
    return None if layers == tuple(range(n_layers)) else layers


def _buffer_tokens(args: argparse.Namespace, model, layers: tuple[int, ...] | None) -> int:
    """--buffer-tokens, or the default halved until one buffer in fp16 (x2 while shuffled, x unique buffers kept
    in memory without --cache-dir) fits in 40% of the available memory; a buffer holds `layers` only (None: all)."""
    from transcoders.data import available_bytes, buffer_bytes, fit_buffer_tokens
    from transcoders.train import TrainConfig

    default = TrainConfig.model_fields["buffer_tokens"].default
    kept = 1
    if args.data_tokens and args.cache_dir is None:
        kept = -(-args.data_tokens // (args.buffer_tokens or default))
    if args.buffer_tokens is not None:
        need = (kept + 1) * buffer_bytes(model, args.buffer_tokens, layers=layers)
        if need > 0.9 * available_bytes():
            raise ConfigError(f"--buffer-tokens {args.buffer_tokens} needs {need / 2**30:.1f} GiB of activations, "
                              f"{available_bytes() / 2**30:.1f} GiB are available: use a smaller value (or leave it "
                              "out to size it automatically)")  # fmt: skip
        return args.buffer_tokens
    ckpt = Path(args.out) / "checkpoint.safetensors"
    if ckpt.exists():  # a resume keeps the buffers it started with (they are part of the data order)
        from safetensors import safe_open

        try:
            with safe_open(str(ckpt), framework="pt") as f:
                return int(TrainConfig.model_validate_json(f.metadata()["train"]).buffer_tokens)
        except Exception:  # noqa: BLE001  a corrupt checkpoint is reported by the trainer, in one line
            pass
    n = fit_buffer_tokens(model, default, args.batch_tokens, kept, layers=layers)
    if n != default:
        gib = buffer_bytes(model, n, layers=layers) / 2**30
        print(f"note: buffers of {n:,} tokens ({gib:.2f} GiB in fp16) instead of {default:,}, to fit in memory",
              file=sys.stderr)  # fmt: skip
    return n


def _warn_short_corpus(have: int, want: int, corpus: Path, fix: str) -> None:
    if have < want:
        print(f"warning: corpus {corpus} has {have:,} tokens, fewer than the {want:,} asked for: they are repeated "
              f"~{want / max(have, 1):.1f} times (pass a larger corpus, or {fix})", file=sys.stderr)  # fmt: skip


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from tracer.models import load_model
    from transcoders.data import tokenize_corpus
    from transcoders.formats import load_transcoders
    from transcoders.metrics import eval_sequences, evaluate, plot, table

    _threads(args.threads)
    if args.seq_len < 3:  # BOS, and two tokens for a next-token loss
        raise ConfigError(f"--seq-len must be at least 3, got {args.seq_len}")
    lm = load_model(args.model)
    if lm.tokenizer is None:
        raise ConfigError(f"model {args.model} has no tokenizer; evaluation needs one to read the corpus")
    tc = load_transcoders(args.transcoders, lm.cfg, dtype=torch.float32)
    layers = _eval_layers(args.layers, tc.cfg)
    if args.seq_len > lm.cfg.n_ctx:
        raise ConfigError(f"--seq-len {args.seq_len} is longer than model {args.model}'s context window {lm.cfg.n_ctx}")
    if tc.cfg.model_hash and lm.content_hash and tc.cfg.model_hash != lm.content_hash:
        print(f"warning: transcoders were trained on model {tc.cfg.model_hash}, not {lm.content_hash}", file=sys.stderr)
    # the tokens evaluate reads: its sequences (BOS + seq_len - 1 tokens each), consecutive, wrapping around
    need = sum(eval_sequences(args.tokens, args.ce_tokens, args.seq_len)) * (
        args.seq_len - (lm.cfg.bos_token_id is not None))  # fmt: skip
    stream = tokenize_corpus(lm.tokenizer, args.corpus, need)
    _warn_short_corpus(len(stream), need, args.corpus, "fewer --tokens / --ce-tokens")
    r = evaluate(lm.model, tc, stream, args.tokens, args.ce_tokens, args.seq_len, lm.name, str(args.transcoders),
                 progress=not args.json, layers=layers)  # fmt: skip
    plot(r, args.plot)
    if args.json:
        print(json.dumps(r.model_dump() | {"plot": str(args.plot)}))
    else:
        print(table(r))
        print(f"plot saved to {args.plot}")
    return 0


def _eval_layers(spec: str | None, cfg) -> tuple[int, ...] | None:
    """--layers of eval (default: the layers the set has; None = all), each one present in the set."""
    from transcoders.layers import parse_layers, present

    if spec is None:
        return cfg.layers
    layers = parse_layers(spec, cfg.n_layers)
    missing = sorted(set(layers) - set(present(cfg)))
    if missing:
        raise ConfigError(f"--layers {spec}: the transcoder set has no layer {missing[0]} (it has "
                          f"{', '.join(map(str, present(cfg)))})")  # fmt: skip
    return None if layers == tuple(range(cfg.n_layers)) else layers


def run_convert(args: argparse.Namespace) -> int:
    from transcoders.formats import TranscoderFormat, load_transcoders, save_transcoders

    tc = load_transcoders(args.src)
    save_transcoders(tc, args.dst, TranscoderFormat(args.to))
    print(f"wrote {args.dst} ({args.to})")
    return 0
