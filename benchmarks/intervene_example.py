"""Regenerate the README's intervention example for the current default model and CLT.

1. Trace the prompt (default "The opposite of hot is") and find the feature at the position of --word (" hot")
   with the largest signed total effect on the top target.
2. Run and print, exactly as the README shows them: `tracer intervene --ablate` (replacement and free mode) with the
   top target as --token, and `tracer generate --steer` with --factor.
Feature numbers belong to one CLT: rerun this after the default CLT is retrained and paste the output.

Run: .venv/bin/python benchmarks/intervene_example.py [--prompt ...] [--word " hot"] [--factor 4]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # our `kernels`, not a same-named installed package


def run(argv: list[str]) -> str:
    from tracer.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main([*argv, "--threads", "1"])
    return buf.getvalue().rstrip("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--prompt", default="The opposite of hot is")
    ap.add_argument("--word", default=" hot", help="prompt token whose feature is intervened on")
    ap.add_argument("--factor", type=float, default=4.0, help="steering factor")
    args = ap.parse_args()
    import torch

    from tracer.attribute import TraceConfig, attribute
    from tracer.effects import effects
    from tracer.models import load_model
    from transcoders import DEFAULT_TRANSCODERS, load_transcoders

    torch.set_num_threads(1)
    lm = load_model()
    assert lm.tokenizer is not None
    tc = load_transcoders(DEFAULT_TRANSCODERS, lm.cfg, dtype=torch.float32)
    ids = lm.tokenizer.encode_prompt(args.prompt, lm.cfg.n_ctx, lm.cfg.bos_token_id)
    pos = [lm.tokenizer.token_str(i) for i in ids].index(args.word)
    attr = attribute(lm.model, tc, torch.tensor(ids), lm.tokenizer, TraceConfig())
    eff = effects(attr)
    lay = attr.layout
    rows = lay.feature_rows()[lay.features[:, 1] == pos]
    best = lay.node(int(rows[eff.signed_effect[rows].argmax()]))
    spec, target = f"{best.layer}/{best.index}@{pos}", attr.logit_strs[0]
    print(f"# feature {best.layer}/{best.index} at {args.word!r} (position {pos}): signed effect "
          f"{float(eff.signed_effect[rows].max()):+.3f} on {target!r}\n")  # fmt: skip
    cmd = ["intervene", args.prompt, "--ablate", spec, "--token", target]
    print(f'$ tracer intervene "{args.prompt}" --ablate {spec} --token "{target}"')
    print(run(cmd))
    print(f'$ tracer intervene "{args.prompt}" --ablate {spec} --token "{target}" --mode free | tail -1')
    print(run([*cmd, "--mode", "free"]).splitlines()[-1])
    steer = f"{best.layer}/{best.index}={args.factor:g}"
    print(f'$ tracer generate "{args.prompt}" --steer {steer} --tokens 8')
    print(run(["generate", args.prompt, "--steer", steer, "--tokens", "8"]))


if __name__ == "__main__":
    main()
