"""`python -m tracer.bundle clt`: rebuild the bundled default CLT (`tracer/assets/default_clt/`).

Steps (run after `streams`, `train` and `assets`, which write its inputs):
1. model: load the bundled default model (`tracer.models.load_model()`).
2. stream: the LM's own training mix from `<cache>/lm/streams.safetensors`: 127-token chunks, each
   natural or planted by a seeded coin flip (planted chunks cycle through the phase streams).
3. train: `transcoders.train.train` with RECIPE (the shipped run's TrainConfig), `tokens` overridable,
   into `<cache>/clt/default` (resumable: run again after an interruption).
4. ship: save float16 in our format to a temp dir beside the destination, then swap it in; copy training.json.
5. evaluate: `transcoders.metrics.evaluate` on held-out text (`<cache>/corpus/heldout.txt` + the last
   4.5 MB of train.txt, which the CLT never reads) -> eval.json and eval.png in the destination.

Recipe (v5.1): 4,096 JumpReLU features per layer, thresholds initialised at 1.0 (normalised units; at 0.25 the
thresholds, trained as log θ at lr 5e-4, needed thousands of steps to reach their ~0.9 median and the features
stayed dense and slow meanwhile), λ 0.02, pre-activation loss 3e-2 on dead features (1e-4 in v3, 1e-2 in v4/v5; on
the v3 model at 3 M tokens 1e-4 / 1e-3 / 1e-2 gave dead 13.0 / 6.7 / 5.6 % (the last two counted over 300 k instead
of 1 M tokens, which can only raise it), NMSE 0.048 / 0.043 / 0.040, L0 63 / 73 / 91; on v5 at 6 M tokens 1e-2 / 3e-2
gave dead 3.2 / 2.6 %, L0 68.6 / 77.2), 6 M tokens (3.1 M distinct, kept in memory).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from tracer.errors import ConfigError
from tracer.io import atomic_write_bytes, atomic_write_text, check_output_dir
from tracer.models import LoadedModel, load_model
from transcoders.data import tokenize_corpus
from transcoders.formats import load_transcoders, save_transcoders
from transcoders.metrics import evaluate, plot
from transcoders.train import TrainConfig, train

CLT_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_clt"
DEFAULT_TOKENS = 6_000_000  # training tokens of the shipped CLT (RECIPE's data_tokens of them distinct)
CHUNK = 127  # the LM's training chunk (128 with BOS)
EVAL_TAIL_BYTES = 4_500_000  # tail of train.txt added to the eval text (beyond the CLT's data_tokens)
# TrainConfig of the shipped CLT (tokens from DEFAULT_TOKENS; written here so a rebuild never reads what it replaces)
RECIPE: dict[str, Any] = {
    "kind": "clt", "n_features": 4096, "activation": "jumprelu", "topk_k": 0, "input_hook": "mlp_in",
    "skip": True, "tokens": DEFAULT_TOKENS, "batch_tokens": 1024, "seq_len": 128, "buffer_tokens": 262_144,
    "data_tokens": 3_145_728, "lr": 0.0005, "warmup_steps": 20, "decay_frac": 0.2, "sparsity": 0.02,
    "sparsity_ramp_frac": 0.0, "tanh_c": 4.0, "preact": 3e-02, "aux_k": 0, "aux_coef": 0.03125,
    "dead_window": 262_144, "threshold_init": 1.0, "bandwidth": 0.1, "checkpoint_every": 200, "seed": 0,
    "dtype": "float16",
}  # fmt: skip


# 2. stream
def mixed_stream(streams: dict[str, torch.Tensor], seed: int = 0) -> torch.Tensor:
    """[N] int32: CHUNK-token chunks, half natural / half planted by a seeded coin flip, as the LM saw."""
    nat = streams["natural"].long()
    pls = [streams[k].long() for k in sorted(streams) if k.startswith("planted")]
    n = (len(nat) + sum(map(len, pls))) // CHUNK
    pick = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    chunks, i_n, i_p = [], 0, 0
    for p in pick.tolist():
        pl, j = pls[i_p % len(pls)], i_p // len(pls)
        if p and (j + 1) * CHUNK <= len(pl):
            chunks.append(pl[j * CHUNK : (j + 1) * CHUNK])
            i_p += 1
        elif (i_n + 1) * CHUNK <= len(nat):
            chunks.append(nat[i_n * CHUNK : (i_n + 1) * CHUNK])
            i_n += 1
    return torch.cat(chunks).to(torch.int32)


# 3. train
def clt_config(tokens: int, knobs: dict[str, Any] | None = None) -> TrainConfig:
    """RECIPE with `knobs` (n_features, sparsity, kind) and `tokens`; a bad value is one ConfigError line."""
    try:
        return TrainConfig.model_validate(RECIPE | (knobs or {}) | {"tokens": tokens})
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"clt: {'.'.join(map(str, err['loc']))} {err['msg'].lower()}") from None


def train_clt(lm: LoadedModel, cache: Path, out: Path, cfg: TrainConfig) -> None:
    path = cache / "lm/streams.safetensors"
    if not path.exists():
        raise ConfigError(f"{path} not found; run `python -m tracer.bundle streams` first")
    stream = mixed_stream(load_file(path), RECIPE["seed"])
    res = train(lm.model, stream, cfg, out, lm.name, lm.content_hash, progress=True)
    assert res is not None  # stop_after is None: train runs to the end
    print(f"clt: {res.steps} steps, {res.tokens_per_s:,.0f} tokens/s, NMSE {res.final['nmse']:.3f}, "
          f"L0 {res.final['l0']:.1f}")  # fmt: skip


# 4. ship
def ship(out: Path, dest: Path) -> None:
    """float16 in our format into dest, swapped in whole (as a temp dir renamed) so dest is never half-written."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_transcoders(load_transcoders(out, dtype=torch.float16), tmp)
    shutil.copyfile(out / "training.json", tmp / "training.json")
    readme = dest / "README.md"  # hand-written notes survive a rebuild
    if readme.exists():
        shutil.copyfile(readme, tmp / "README.md")
    for f in tmp.iterdir():
        f.chmod(0o644)  # atomic writes create private temp files; package data must be world-readable
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


# 5. evaluate
def eval_corpus(cache: Path) -> Path:
    """held-out text + the last EVAL_TAIL_BYTES of train.txt (from a line start) -> <cache>/clt/eval_corpus.txt."""
    train_txt = (cache / "corpus/train.txt").read_bytes()  # bytes, as the shipped eval text was cut
    tail = train_txt[train_txt.find(b"\n", len(train_txt) - EVAL_TAIL_BYTES) + 1 :]
    path = cache / "clt/eval_corpus.txt"
    atomic_write_bytes(path, (cache / "corpus/heldout.txt").read_bytes() + tail)
    return path


def _shown(path: Path) -> Path:
    """path relative to the working directory when inside it, else as given."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def evaluate_clt(lm: LoadedModel, cache: Path, dest: Path, tokens: int = 1_000_000, ce_tokens: int = 100_000) -> None:
    assert lm.tokenizer is not None  # the bundled model ships its tokenizer
    seq_len = RECIPE["seq_len"]
    stream = tokenize_corpus(lm.tokenizer, eval_corpus(cache), tokens + ce_tokens + 2 * seq_len * 64)
    tc = load_transcoders(dest, lm.cfg, dtype=torch.float32)
    shown = _shown(dest)  # the shipped eval.json names no machine-specific folder
    r = evaluate(lm.model, tc, stream, tokens, ce_tokens, seq_len, lm.name, str(shown))
    plot(r, dest / "eval.png")
    atomic_write_text(dest / "eval.json", json.dumps(r.model_dump() | {"plot": str(shown / "eval.png")}) + "\n")
    for f in ("eval.png", "eval.json"):
        (dest / f).chmod(0o644)
    print(f"clt eval: NMSE {r.mean_nmse:.4f}, L0 {r.total_l0:.1f}, dead {r.dead_pct:.1f} %, "
          f"CE recovered {r.splice.ce_recovered:.4f}, top-1 {r.splice.top1_agreement:.4f} "
          f"({r.splice.top1_agreement_clear:.4f} where the model's top-1 is clear)")  # fmt: skip


def build_clt(cache: Path, dest: Path = CLT_DIR, tokens: int = DEFAULT_TOKENS, out: Path | None = None,
              eval_tokens: int = 1_000_000, ce_tokens: int = 100_000, model: Path | None = None,
              knobs: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Steps 1-5; `dest` and `out` (default <cache>/clt/default) are parameters so smoke runs stay in /tmp;
    `model` defaults to the bundled model; `knobs` override RECIPE entries (n_features, sparsity, kind).
    Settings and the destination are checked before anything loads (training takes half an hour)."""
    cfg = clt_config(tokens, knobs)
    check_output_dir(dest.parent, "--clt-dir's folder")  # ship() swaps dest in from a sibling temp dir
    check_output_dir(dest, "--clt-dir")
    lm = load_model(model)
    train_clt(lm, cache, out or cache / "clt/default", cfg)
    ship(out or cache / "clt/default", dest)
    evaluate_clt(lm, cache, dest, eval_tokens, ce_tokens)


def step_clt(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    knobs = {"n_features": args.clt_features, "sparsity": args.clt_sparsity, "kind": args.clt_kind,
             "preact": args.clt_preact}
    changed = {k: v for k, v in (knobs | {"tokens": args.clt_tokens}).items() if v != RECIPE[k]}  # own checkpoint dir
    out = args.cache / ("clt/default" if not changed else "clt/" + "_".join(f"{k}{v}" for k, v in changed.items()))
    build_clt(args.cache, args.clt_dir, args.clt_tokens, out, model=args.model_dir, knobs=knobs)
