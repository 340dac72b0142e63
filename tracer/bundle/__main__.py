"""`python -m tracer.bundle build`: rebuild the bundled default model (and its CLT) from scratch.

Steps (each is also a subcommand; outputs of one are the inputs of the next):
1. corpus: Debian packages -> `.cache/corpus/{train,heldout}.txt`.
2. tokenizer: the shipped tokenizer (`default_model/tokenizer.json`, a byte-level BPE trained on natural + v2
   planted text) is kept: copied to `.cache/lm/tokenizer.json`; `--retrain-tokenizer` trains a new one on natural +
   planted text instead. Single-token check of the planted answer words either way.
3. streams: tokenize natural train text, one planted stream per training phase, and held-out natural text
   -> `.cache/lm/streams.safetensors`.
4. train: the LM (resumable: run `train` again after an interruption; checkpoints in `.cache/lm/`).
   Default 6,400 steps of 16 x 256 tokens (26.2 M tokens; the last 400 the polish phase) with a bf16 forward: about
   62 min on one CPU thread here.
5. assets: write `tracer/assets/default_model/` (config.json, model.safetensors, tokenizer.json, loss curve),
   `tracer/assets/planted_heldout.json` and `tracer/assets/corpus_sample.txt.gz`.
6. evaluate: held-out natural-text loss and planted-task accuracy -> `default_model/eval.json`.
7. clt: train the default cross-layer transcoder on the model's own training mix and ship it (float16) with its
   evaluation -> `tracer/assets/default_clt/` (see tracer/bundle/clt.py; 6 M tokens, 27 min on one thread here).
8. features: the default CLT's feature store, rebuilt on the model's own text mix ->
   `tracer/assets/default_clt/features.sqlite` (see tracer/features/bundle.py; a few minutes on one thread).
`snapshots` (not part of build): held-out accuracy of the weight snapshots `train` keeps every 500 steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tracer.bundle import corpus, planted, tokenizer
from tracer.bundle.clt import CLT_DIR, DEFAULT_TOKENS, RECIPE, step_clt
from tracer.bundle.train import DEFAULT_OUT, TrainConfig, model_config, plot_losses, tokenize_stream, train
from tracer.errors import TracerError
from tracer.features.bundle import step_features
from tracer.io import atomic_save_safetensors, atomic_write_bytes, atomic_write_text, check_output_dir
from tracer.models import Transformer, save_hf

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MODEL_DIR = ASSETS / "default_model"
PLANTED_CHARS = 12_000_000  # planted training text generated (sampled with replacement during training)


def step_corpus(args: argparse.Namespace) -> None:
    files = corpus.build_corpus(args.cache / "corpus", seed=args.seed, heldout_every=8)
    print(f"corpus: train {files.n_train_chars:,} chars, held-out {files.n_heldout_chars:,} chars")


def _planted_docs(args: argparse.Namespace) -> list[str]:
    return planted.training_documents(PLANTED_CHARS, seed=args.seed)


def step_tokenizer(args: argparse.Namespace) -> None:
    shipped = MODEL_DIR / "tokenizer.json"
    if args.retrain_tokenizer or not shipped.exists():
        docs = corpus.read_documents(args.cache / "corpus/train.txt") + _planted_docs(args)
        tok = tokenizer.train_tokenizer(docs, args.vocab, planted.answer_words())
    else:  # a new tokenizer would change every token id and every artifact derived from them
        tok = tokenizer.load_tokenizer(shipped)
    tokenizer.save_tokenizer(tok, args.out / "tokenizer.json")
    check = tokenizer.check_single_tokens(tok, planted.answer_words())
    print(
        f"tokenizer: vocab {tok.get_vocab_size()}, {check.n_words - len(check.multi_token)}/{check.n_words} "
        f"planted answer words are single tokens; not: {check.multi_token}"
    )


def step_streams(args: argparse.Namespace) -> None:
    tok = tokenizer.load_tokenizer(args.out / "tokenizer.json")
    eot = tokenizer.eot_id(tok)
    natural_docs = corpus.read_documents(args.cache / "corpus/train.txt")
    words, fillers = planted.wide_words(natural_docs), planted.natural_fillers(natural_docs, seed=args.seed)
    streams = {
        "natural": tokenize_stream(tok, natural_docs, eot),
        **{
            f"planted_{i}": tokenize_stream(
                tok, planted.training_documents(PLANTED_CHARS, args.seed + i, mix, words, fillers, lead), eot
            )
            for i, (mix, lead) in enumerate(zip(planted.PHASE_MIXES, planted.PHASE_IOI_LEAD, strict=True))
        },
        "heldout": tokenize_stream(tok, corpus.read_documents(args.cache / "corpus/heldout.txt"), eot),
    }
    atomic_save_safetensors(streams, args.out / "streams.safetensors")
    print("streams: " + ", ".join(f"{k} {len(v):,} tokens" for k, v in streams.items()))


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(steps=args.steps, polish_steps=args.polish_steps, threads=args.threads, seed=args.seed)


def step_train(args: argparse.Namespace) -> None:
    tc = _train_config(args)  # bad values fail before any loading
    path = args.out / "streams.safetensors"
    if not path.is_file():
        raise TracerError(f"{path} not found: run `python -m tracer.bundle streams` first")
    s = load_file(path)
    names = ["natural", "heldout", *(f"planted_{i}" for i in range(len(planted.PHASE_MIXES)))]
    if missing := [n for n in names if n not in s]:  # e.g. a v4 cache, before the polish phase's stream
        raise TracerError(f"{path} lacks {', '.join(missing)}: rerun `python -m tracer.bundle streams`")
    tok = tokenizer.load_tokenizer(args.out / "tokenizer.json")
    eot = tokenizer.eot_id(tok)
    phases = [s[f"planted_{i}"] for i in range(len(planted.PHASE_MIXES))]
    train(tc, s["natural"], phases, s["heldout"], tok.get_vocab_size(), eot, args.out)


def write_data_assets(args: argparse.Namespace) -> None:
    """The held-out planted prompts and the held-out natural-text sample (independent of the model), beside the
    model directory (the package's assets folder by default)."""
    assets = Path(args.model_dir).parent
    tok = tokenizer.load_tokenizer(args.out / "tokenizer.json")
    held = planted.heldout_prompts() + planted.random_token_prompts(tok)
    prompts = [{"task": p.task.value, "prompt": p.prompt, "answer": p.answer} for p in held]
    atomic_write_text(assets / "planted_heldout.json", json.dumps(prompts, indent=1))
    text = (args.cache / "corpus/heldout.txt").read_bytes()
    atomic_write_bytes(assets / "corpus_sample.txt.gz", gzip.compress(text, 9, mtime=0))


def export_weights(out: Path, weights: dict[str, torch.Tensor], dest: Path) -> TrainConfig:
    """Model weights (state-dict keys, untied unembedding omitted) as an HF Llama directory (fp16) + tokenizer."""
    tok = tokenizer.load_tokenizer(out / "tokenizer.json")
    tc = TrainConfig.from_json((out / "train_config.json").read_text())
    cfg = model_config(tc, tok.get_vocab_size(), tokenizer.eot_id(tok))
    model = Transformer(cfg)
    model.load_state_dict(weights, strict=False)
    save_hf(cfg, model.state_dict(), dest, dtype=torch.float16)
    shutil.copyfile(out / "tokenizer.json", dest / "tokenizer.json")
    return tc


def export_model(args: argparse.Namespace) -> None:
    """The latest checkpoint as an HF Llama directory (fp16 weights) with tokenizer and loss curve."""
    ckpt = load_file(args.out / "ckpt.safetensors")
    dest: Path = args.model_dir
    tc = export_weights(args.out, {k[6:]: v for k, v in ckpt.items() if k.startswith("model.")}, dest)
    meta = json.loads((args.out / "ckpt.json").read_text())
    plot_losses(meta["log"], dest / "loss_curve.png", tc)
    info = {"train_config": dataclasses.asdict(tc), "step": meta["step"], "log": meta["log"]}
    atomic_write_text(dest / "training.json", json.dumps(info, indent=1))


def step_assets(args: argparse.Namespace) -> None:
    write_data_assets(args)
    export_model(args)
    for f in [*Path(args.model_dir).parent.glob("*.*"), *Path(args.model_dir).glob("*.*")]:
        f.chmod(0o644)  # atomic writes create private temp files; package data must be world-readable
    print(f"assets written to {args.model_dir} and {Path(args.model_dir).parent}")


def step_evaluate(args: argparse.Namespace) -> None:
    from tracer.bundle.evaluate import evaluate, report

    assets = Path(args.model_dir).parent
    r = evaluate(args.model_dir, assets / "corpus_sample.txt.gz", assets / "planted_heldout.json")
    report(r, args.model_dir / "eval.json", args.json)


def step_snapshots(args: argparse.Namespace) -> None:
    """Held-out planted accuracy of every kept snapshot (`<out>/snapshots/`): accuracy over training steps."""
    import tempfile

    from tracer.bundle.evaluate import load_heldout, planted_scores
    from tracer.models import load_model

    snaps = sorted((args.out / "snapshots").glob("step*.safetensors"))
    if not snaps:
        raise TracerError(f"no snapshots in {args.out / 'snapshots'}; `train` keeps one every 500 steps")
    held = Path(args.model_dir).parent / "planted_heldout.json"
    for need in (held, args.out / "tokenizer.json", args.out / "train_config.json"):
        if not need.is_file():
            raise TracerError(f"{need} not found (written by `python -m tracer.bundle assets` / `train`)")
    items = load_heldout(held)
    print("step   " + " ".join(f"{t.value:>11.11}" for t in planted.Task))
    for snap in snaps:
        try:
            weights = load_file(snap)
        except (SafetensorError, OSError) as e:
            raise TracerError(f"{snap}: unreadable snapshot ({e})") from None
        with tempfile.TemporaryDirectory() as d:
            export_weights(args.out, weights, Path(d))
            scores = {s.task: s.accuracy for s in planted_scores(load_model(Path(d)), items)}
        print(f"{int(snap.stem[4:]):>5}  " + " ".join(f"{scores[t.value]:>11.1%}" for t in planted.Task))


STEPS = {"corpus": step_corpus, "tokenizer": step_tokenizer, "streams": step_streams, "train": step_train,
         "assets": step_assets, "evaluate": step_evaluate, "clt": step_clt,
         "features": step_features}  # fmt: skip
COMMANDS = STEPS | {"snapshots": step_snapshots}  # `build` runs STEPS in order; the others run alone


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tracer.bundle", description="Rebuild the bundled default model.")
    ap.add_argument("step", choices=["build", *COMMANDS],
                    help="build = every step in order; snapshots = held-out accuracy of each kept snapshot")
    ap.add_argument("--cache", type=Path, default=Path(".cache"), help="download/extract cache directory")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="tokenizer, streams and checkpoint directory")
    ap.add_argument(
        "--model-dir",
        type=Path,
        default=MODEL_DIR,
        help="where assets/evaluate/clt put/read the model (held-out data: its parent)",
    )
    ap.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps, help="training steps of 16 x 256 tokens")
    ap.add_argument("--polish-steps", type=int, default=TrainConfig.polish_steps,
                    help="train: the last steps' polish phase (IOI after natural-text words), included in --steps")
    ap.add_argument("--retrain-tokenizer", action="store_true", help="tokenizer: train a new BPE, not keep the shipped")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for training")
    ap.add_argument("--seed", type=int, default=0, help="seed for corpus split, planted text and training")
    ap.add_argument("--json", action="store_true", help="evaluate: print JSON instead of a table")
    ap.add_argument("--clt-tokens", type=int, default=DEFAULT_TOKENS, help="clt: training tokens for the CLT")
    ap.add_argument("--clt-dir", type=Path, default=CLT_DIR, help="clt: where the trained CLT is shipped")
    ap.add_argument("--clt-features", type=int, default=RECIPE["n_features"], help="clt: features per layer")
    ap.add_argument("--clt-sparsity", type=float, default=RECIPE["sparsity"], help="clt: final sparsity penalty λ")
    ap.add_argument(
        "--clt-preact", type=float, default=RECIPE["preact"], help="clt: pre-activation loss μ on dead features"
    )
    ap.add_argument(
        "--clt-kind",
        choices=["clt", "plt"],
        default="clt",
        help="clt: train per-layer transcoders instead (for the CLT-vs-PLT benchmark; not shipped)",
    )
    args = ap.parse_args(argv)
    try:
        check_output_dir(args.out, "--out").mkdir(parents=True, exist_ok=True)
        for name in STEPS if args.step == "build" else [args.step]:
            COMMANDS[name](args)
    except TracerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # checkpoints and assets are written atomically: nothing is half-written
        print("error: interrupted; run the same command again (train and clt resume from their last checkpoint)",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
