"""Feature-store build speed: does the bookkeeping keep up with the forward pass? (issue 16: goal ≥ 70 %)

1. data: the bundled corpus sample, sequences of 128 tokens (BOS + 127), batches of 16 sequences, as
   `tracer features build` streams them.
2. forward alone: the model with the transcoders' input hooks captured + the encoder (the activations a build
   needs), timed over --batches batches after one warm-up batch.
3. forward + bookkeeping: the same batches, each also folded into the running statistics (tracer.features.build
   State.update: counts, sums, fine histogram, streaming top-k contexts, seeded reservoir sample).
Both measured in one process, interleaved per batch (so load changes hit both alike), on --threads threads.
Prints tokens/s of each and their ratio; --out writes JSON.

Run: .venv/bin/python benchmarks/bench_features.py [--batches 40 --threads 1 --out bench_features.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description="Feature-store build speed: forward alone vs forward + bookkeeping.")
    ap.add_argument("--batches", type=int, default=40, help="timed batches of 16 x 128 tokens")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from tracer.features.build import BuildConfig, State, encode_batch
    from tracer.features.corpus import corpus_stream
    from tracer.models import load_model
    from transcoders import DEFAULT_TRANSCODERS, load_transcoders
    from transcoders.data import DEFAULT_CORPUS, sequences

    lm = load_model()
    assert lm.tokenizer is not None
    tc = load_transcoders(DEFAULT_TRANSCODERS, lm.cfg, dtype=torch.float32)
    cfg = BuildConfig()
    B, P = cfg.batch_seqs, cfg.seq_len
    stream = corpus_stream(lm.tokenizer, DEFAULT_CORPUS, (args.batches + 1) * B * P, None)  # 1.
    state = State(tc.cfg.n_layers * tc.cfg.n_features, cfg)
    fwd = book = 0.0
    for i in range(args.batches + 1):
        toks = sequences(stream, i * B, B, P, lm.cfg.bos_token_id)
        t0 = time.perf_counter()
        acts = encode_batch(lm.model, tc, toks, True)  # 2.
        t1 = time.perf_counter()
        state.update(acts, toks, torch.arange(i * B, (i + 1) * B))  # 3.
        t2 = time.perf_counter()
        if i:  # batch 0 warms up
            fwd, book = fwd + t1 - t0, book + t2 - t1
    n = args.batches * B * (P - 1)
    res = {"model": lm.name, "transcoders": DEFAULT_TRANSCODERS.name, "threads": args.threads,
           "tokens": n, "forward_tokens_per_s": n / fwd, "forward_bookkeeping_tokens_per_s": n / (fwd + book),
           "ratio": fwd / (fwd + book), "machine": platform.machine(), "torch": torch.__version__}  # fmt: skip
    print(f"{n:,} tokens, {args.threads} thread(s): forward alone {res['forward_tokens_per_s']:,.0f} tokens/s, "
          f"forward + bookkeeping {res['forward_bookkeeping_tokens_per_s']:,.0f} tokens/s "
          f"({res['ratio']:.0%} of forward alone; goal ≥ 70 %)")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
