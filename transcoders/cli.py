"""`tracer transcoders train | eval | convert`.

1. train: load the model, tokenise the corpus, run `train.train` (resumes from OUT/checkpoint.safetensors);
   every TrainConfig field is an option, its help text is the field description.
2. eval: load model and transcoders, run `metrics.evaluate`, print a table (or one JSON object with --json),
   save the NMSE/L0 plot.
3. convert: load in either format, save in the other (or the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from enum import Enum
from pathlib import Path

import torch

from tracer.errors import ConfigError
from tracer.models import DEFAULT_MODEL, load_model
from transcoders.config import INPUT_HOOKS
from transcoders.data import DEFAULT_CORPUS, tokenize_corpus
from transcoders.formats import DEFAULT_TRANSCODERS, TranscoderFormat, load_transcoders, save_transcoders
from transcoders.train import TrainConfig

RENAMED = {"n_features": "features"}  # TrainConfig field -> option name, where the issue names it differently


def _add_train_options(p: argparse.ArgumentParser) -> None:
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
        else:
            p.add_argument(opt, dest=name, type=ann, default=field.default,  # type: ignore[arg-type]
                           help=f"{field.description} (default {field.default})")  # fmt: skip


def add_parser(subparsers) -> None:
    top = subparsers.add_parser("transcoders", help="train, evaluate and convert transcoders")
    sub = top.add_subparsers(dest="transcoders_command", required=True)

    tr = sub.add_parser("train", help="train a CLT or PLT on the model's activations")
    tr.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model directory or .gguf (default: bundled)")
    tr.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="text file or folder (default: bundled)")
    tr.add_argument("--out", type=Path, required=True, help="output directory (also holds the checkpoint)")
    tr.add_argument("--cache-dir", type=Path, default=None, help="store activation shards here (default: memory)")
    tr.add_argument("--init-from", type=Path, default=None, help="warm start: checkpoint.safetensors of a run")
    tr.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    tr.add_argument("--shard-features", action="store_true", help="under torchrun: each rank owns a slice of every "
                    "layer's features (default: data parallel, each rank its own token shard)")  # fmt: skip
    _add_train_options(tr)
    tr.set_defaults(func=run_train)

    ev = sub.add_parser("eval", help="per-layer NMSE/L0/dead/dense and the spliced replacement model's CE")
    ev.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model directory or .gguf (default: bundled)")
    ev.add_argument("--transcoders", type=Path, default=DEFAULT_TRANSCODERS, help="transcoder directory")
    ev.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="text file or folder (default: bundled)")
    ev.add_argument("--tokens", type=int, default=1_000_000, help="tokens for the per-layer statistics")
    ev.add_argument("--ce-tokens", type=int, default=100_000, help="tokens for the spliced-model CE figures")
    ev.add_argument("--seq-len", type=int, default=128, help="sequence length incl. BOS")
    ev.add_argument("--plot", type=Path, default=Path("transcoders_eval.png"), help="where to save the plot")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ev.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ev.set_defaults(func=run_eval)

    cv = sub.add_parser("convert", help="convert between our format and circuit-tracer's")
    cv.add_argument("src", type=Path, help="transcoder directory (either format)")
    cv.add_argument("dst", type=Path, help="output directory")
    cv.add_argument("--to", required=True, choices=[f.value for f in TranscoderFormat], help="output format")
    cv.set_defaults(func=run_convert)


def _threads(n: int) -> None:
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
    from transcoders.train import train

    _threads(args.threads)
    try:
        cfg = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.model_fields})
    except ValueError as e:
        raise ConfigError(f"invalid training settings: {str(e).splitlines()[-1].strip()}") from None
    lm = load_model(args.model)
    if lm.tokenizer is None:
        raise ConfigError(f"model {args.model} has no tokenizer; training needs one to read the corpus")
    stream = tokenize_corpus(lm.tokenizer, args.corpus, (cfg.data_tokens or cfg.tokens) + cfg.buffer_tokens)
    world = _world(args)
    if world is not None:  # torchrun: transcoders.distributed
        from transcoders.distributed import train_distributed

        res = train_distributed(lm.model, stream, cfg, args.out, world, lm.name, lm.content_hash, args.cache_dir,
                                args.shard_features, progress=not args.no_progress)  # fmt: skip
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


def run_eval(args: argparse.Namespace) -> int:
    from transcoders.metrics import evaluate, plot, table

    _threads(args.threads)
    lm = load_model(args.model)
    if lm.tokenizer is None:
        raise ConfigError(f"model {args.model} has no tokenizer; evaluation needs one to read the corpus")
    tc = load_transcoders(args.transcoders, lm.cfg, dtype=torch.float32)
    if tc.cfg.model_hash and lm.content_hash and tc.cfg.model_hash != lm.content_hash:
        print(f"warning: transcoders were trained on model {tc.cfg.model_hash}, not {lm.content_hash}", file=sys.stderr)
    need = args.tokens + args.ce_tokens + 2 * args.seq_len * 64
    stream = tokenize_corpus(lm.tokenizer, args.corpus, need)
    r = evaluate(lm.model, tc, stream, args.tokens, args.ce_tokens, args.seq_len, lm.name, str(args.transcoders))
    plot(r, args.plot)
    if args.json:
        print(json.dumps(r.model_dump() | {"plot": str(args.plot)}))
    else:
        print(table(r))
        print(f"plot saved to {args.plot}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    tc = load_transcoders(args.src)
    save_transcoders(tc, args.dst, TranscoderFormat(args.to))
    print(f"wrote {args.dst} ({args.to})")
    return 0
