"""`python -m tracer.bundle features`: rebuild the shipped feature store of the default CLT
(`tracer/assets/default_clt/features.sqlite`); run it whenever the default model or CLT changes
(tests/tracer/test_features_shipped.py fails until then).

1. corpus: the model's own mix, as its training saw it: the bundled natural-text sample (`corpus_sample.txt.gz`)
   in ~600-character blocks, interleaved one to one with planted training documents (tracer.bundle.planted,
   seeded) -> `<cache>/features/corpus.txt`.
2. build: `tracer features build` on it with BUNDLE_TOKENS tokens, from scratch (--overwrite), on `--threads`
   threads (default 1: a few minutes), written beside the default CLT.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

from tracer.io import atomic_write_text

BUNDLE_TOKENS = 300_000
BLOCK_CHARS = 600


def mixed_corpus(cache: Path, n_tokens: int, seed: int = 0) -> Path:
    """Step 1 (about 4 characters per token, twice the need so the build never runs short)."""
    from tracer.bundle import planted
    from transcoders.data import DEFAULT_CORPUS

    natural = gzip.decompress(DEFAULT_CORPUS.read_bytes()).decode("utf-8", errors="replace")
    blocks, cur = [], []
    for line in natural.splitlines(keepends=True):
        cur.append(line)
        if sum(map(len, cur)) >= BLOCK_CHARS:
            blocks.append("".join(cur))
            cur = []
    docs = planted.training_documents(len(natural), seed=seed)
    parts = [p for pair in zip(blocks, docs, strict=False) for p in (pair[0], pair[1].strip() + "\n")]
    text, need = [], 8 * n_tokens
    for p in parts:
        text.append(p)
        need -= len(p)
        if need <= 0:
            break
    path = cache / "features" / "corpus.txt"
    atomic_write_text(path, "".join(text))
    return path


def step_features(args: argparse.Namespace) -> None:
    """Step 2 (through the CLI, so the shipped store is exactly what `tracer features build` writes)."""
    from tracer.features import store_path
    from tracer.features.cli import run_build
    from transcoders import DEFAULT_TRANSCODERS

    corpus = mixed_corpus(Path(args.cache), BUNDLE_TOKENS, args.seed)
    out = store_path(getattr(args, "clt_dir", None) or DEFAULT_TRANSCODERS)
    ns = argparse.Namespace(transcoders=out.parent, store=out, model=None, corpus=corpus, tokens=BUNDLE_TOKENS,
                            seq_len=128, batch_seqs=16, top_k=10, seed=args.seed, threads=args.threads,
                            checkpoint_seconds=60.0, overwrite=True, json=False)  # fmt: skip
    run_build(ns)
    out.chmod(0o644)  # package data must be world-readable
