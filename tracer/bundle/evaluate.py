"""Evaluate a model on held-out natural text and on the planted tasks' held-out prompts.

Algorithm:
1. Load the model with the runtime (`tracer.models.load_model`, offline) and the held-out prompt file.
2. Validation loss: the corpus sample's documents joined by `<|endoftext|>`, cut into consecutive windows of
   n_ctx + 1 tokens (at most `max_windows`), mean next-token cross-entropy in nats.
3. Planted accuracy: each prompt is encoded as the runtime traces it (BOS first); the top-1 next token at the
   last position must equal the answer's first token. Prompts are right-padded into batches (causal attention
   makes the padding invisible to earlier positions).
4. Report: a table (or `--json`) per task with the target, optionally written to a file.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tracer.bundle.corpus import DOC_SEP
from tracer.bundle.planted import Task
from tracer.errors import TracerError
from tracer.io import atomic_write_text
from tracer.models import DEFAULT_MODEL, LoadedModel, load_model

ASSETS = DEFAULT_MODEL.parent
TARGETS = {Task.FACTS: 0.95, Task.TWO_HOP: 0.90, Task.IOI: 0.95, Task.INDUCTION: 0.90, Task.INDUCTION_RANDOM: 0.90,
           Task.OPPOSITES: 0.95}  # fmt: skip


@dataclass(frozen=True)
class TaskScore:
    task: str
    n: int
    correct: int
    accuracy: float
    target: float | None  # None for diagnostics without a target


@dataclass(frozen=True)
class EvalResult:
    model: str
    val_loss: float  # nats per token on held-out natural text
    val_tokens: int
    tasks: list[TaskScore]


# ---- 1. load ----------------------------------------------------------------------------------------------
def load_heldout(path: Path = ASSETS / "planted_heldout.json") -> list[dict]:
    """[{task, prompt, answer}] as written by `python -m tracer.bundle assets`."""
    return json.loads(path.read_text())


# ---- 2. validation loss -----------------------------------------------------------------------------------
@torch.no_grad()
def validation_loss(lm: LoadedModel, text: str, max_windows: int = 256) -> tuple[float, int]:
    """(mean loss, tokens scored) over consecutive windows of the documents in `text`."""
    assert lm.tokenizer is not None and lm.cfg.bos_token_id is not None
    ids: list[int] = []
    for doc in text.split(DOC_SEP):
        ids += [lm.cfg.bos_token_id, *lm.tokenizer.encode(doc)]
        if len(ids) > (max_windows + 1) * (lm.cfg.n_ctx + 1):
            break
    n_ctx = lm.cfg.n_ctx
    n = min(max_windows, (len(ids) - 1) // n_ctx)
    rows = torch.tensor([ids[i * n_ctx : i * n_ctx + n_ctx + 1] for i in range(n)])
    total = 0.0
    for b in rows.split(32):
        logits = lm.model(b[:, :-1])
        total += float(F.cross_entropy(logits.flatten(0, 1), b[:, 1:].flatten(), reduction="sum"))
    return total / (n * n_ctx), n * n_ctx


# ---- 3. planted accuracy ----------------------------------------------------------------------------------
@torch.no_grad()
def top1(lm: LoadedModel, prompts: list[str], batch: int = 64) -> list[int]:
    """Greedy next token after each prompt (BOS prepended as when tracing)."""
    assert lm.tokenizer is not None
    out: list[int] = []
    for i in range(0, len(prompts), batch):
        enc = [lm.tokenizer.encode_prompt(p, lm.cfg.n_ctx) for p in prompts[i : i + batch]]
        width = max(map(len, enc))
        toks = torch.tensor([e + [0] * (width - len(e)) for e in enc])
        logits = lm.model(toks)
        last = torch.tensor([len(e) - 1 for e in enc])
        out += logits[torch.arange(len(enc)), last].argmax(-1).tolist()
    return out


def planted_scores(lm: LoadedModel, items: list[dict]) -> list[TaskScore]:
    assert lm.tokenizer is not None
    pred = top1(lm, [it["prompt"] for it in items])
    scores = []
    for task in Task:
        idx = [i for i, it in enumerate(items) if it["task"] == task.value]
        ok = sum(pred[i] == lm.tokenizer.encode(items[i]["answer"])[0] for i in idx)
        acc = ok / len(idx) if idx else 0.0
        scores.append(TaskScore(task.value, len(idx), ok, round(acc, 4), TARGETS.get(task)))
    return scores


# ---- 4. report --------------------------------------------------------------------------------------------
def evaluate(model: Path | None = None, sample: Path = ASSETS / "corpus_sample.txt.gz",
             heldout: Path = ASSETS / "planted_heldout.json", max_windows: int = 256) -> EvalResult:  # fmt: skip
    for path, what in ((sample, "held-out text sample"), (heldout, "held-out prompts file")):
        if not Path(path).is_file():
            raise TracerError(f"{what} {path} not found (written by `python -m tracer.bundle assets`)")
    lm = load_model(model)
    loss, n = validation_loss(lm, gzip.decompress(sample.read_bytes()).decode("utf-8"), max_windows)
    return EvalResult(lm.name, round(loss, 4), n, planted_scores(lm, load_heldout(heldout)))


def table(r: EvalResult) -> str:
    lines = [f"model {r.model}: held-out natural-text loss {r.val_loss:.3f} nats ({r.val_tokens:,} tokens)",
             f"{'task':<24}{'n':>5}{'top-1':>8}{'target':>8}"]  # fmt: skip
    for s in r.tasks:
        target = f"{s.target:.0%}" if s.target is not None else "-"
        mark = "" if s.target is None else ("  ok" if s.accuracy >= s.target else "  MISSED")
        lines.append(f"{s.task:<24}{s.n:>5}{s.accuracy:>8.1%}{target:>8}{mark}")
    return "\n".join(lines)


def report(r: EvalResult, write: Path | None, as_json: bool) -> None:
    """Write the JSON result to `write` (atomically, world-readable) when given; print it or the table."""
    js = json.dumps(asdict(r), indent=2)
    if write:
        atomic_write_text(write, js + "\n")
        write.chmod(0o644)  # package data (default_model/eval.json) must be world-readable
    print(js if as_json else table(r))


def main(argv: list[str] | None = None) -> int:
    desc = "Evaluate a model on held-out natural text and planted-task prompts."
    ap = argparse.ArgumentParser(prog="python -m tracer.bundle.evaluate", description=desc)
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled model)")
    ap.add_argument("--sample", type=Path, default=ASSETS / "corpus_sample.txt.gz", help="held-out text (.gz)")
    ap.add_argument("--heldout", type=Path, default=ASSETS / "planted_heldout.json", help="held-out prompts")
    ap.add_argument("--max-windows", type=int, default=256, help="validation windows of n_ctx tokens")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--write", type=Path, default=None, help="also write the JSON result to this file")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        r = evaluate(args.model, args.sample, args.heldout, args.max_windows)
    except TracerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(r, args.write, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
