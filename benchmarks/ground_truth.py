"""Ground-truth benchmark: do attribution graphs of the default model recover the planted tasks' known mechanisms?

Algorithm:
1. load: the default model and CLT (or --model / --transcoders) and the held-out prompts (planted_heldout.json,
   unseen frames and entities); per task, the first --per-task prompts the model answers correctly (a graph can
   only explain a behaviour the model has; how many were answered is reported).
2. key: positions from each prompt's construction (tracer.bundle.planted tables): facts: the country's tokens;
   two-hop: the landmark's tokens; opposites: the source word's tokens (a multi-token name's identity sits in any
   of its tokens: "Iguazu Falls" is told apart by "Iguazu"); induction (words and random tokens): the token after
   the earlier occurrence of the repeated span (the earlier position whose preceding tokens match the prompt's end
   longest: a common sub-word such as "s" also occurs elsewhere); IOI: the indirect object's name and the
   subject's two mentions.
3. trace: `tracer.attribute.attribute` with the answer as the one target (IOI: the logit difference IO - S).
4. score: a position's influence is the graph influence (row-normalised |A|, `tracer.effects`) of its token
   embedding on the target. Criterion: the middle position (not BOS; not the last token, whose direct path to the
   logit dominates every graph) with the largest influence lies in the key span; IOI: IO's influence exceeds each
   subject mention's. Control, which must fail: the same criterion with the key span moved to a seeded random
   span of the same length elsewhere among the middle positions (wrong position); IOI: labels swapped (a subject
   mention outweighs IO).
5. ablation: for the top --ablate features by |signed total effect| in each graph, ablate each one
   (`tracer.interventions`, replacement mode) and compare -(graph effect) with the measured change of the target;
   Spearman rank correlation per prompt, averaged.
6. report: a table, or `--json`: {"tasks": {task: pass_rate}, "controls": {task: pass_rate}, "spearman": value}.
   The table adds an IOI diagnostic: how often IO outweighs the subject's second mention alone, and in how many
   failures the first mention is the one that outweighs IO.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tracer.bundle import planted
from tracer.bundle.planted import Task

TASKS = (Task.FACTS, Task.TWO_HOP, Task.IOI, Task.INDUCTION, Task.INDUCTION_RANDOM, Task.OPPOSITES)
CAPITAL_OF = {planted._first(a).strip(): c for c, a in planted.CAPITALS.items()}  # answer word -> country
OPPOSITE_OF = {y: x for p in planted.OPPOSITES for x, y in (p, p[::-1])}  # answer -> source word


@dataclass(frozen=True)
class Key:
    """Positions (BOS = 0) that the mechanism says matter, and the trace target."""

    span: tuple[int, ...]  # the positions of which one must carry the most influence (IOI: the IO name)
    others: tuple[int, ...] = ()  # IOI: the subject's mentions, which the key must outweigh
    minus: str | None = None  # IOI: the logit-difference target's second token


@dataclass
class TaskResult:
    n: int = 0  # prompts traced
    answered: int = 0  # prompts looked at until `n` correct ones were found
    passed: int = 0
    control_n: int = 0
    control_passed: int = 0
    spearman: list[float] = field(default_factory=list)
    io_beats_s2: int = 0  # IOI diagnostic: IO outweighs the subject's second mention (the final clause's subject)
    s1_wins: int = 0  # IOI diagnostic: failures in which the subject's first mention holds the most influence


# ---- 2. key positions --------------------------------------------------------------------------------------
def _token_of_char(offsets: list[tuple[int, int]], char: int) -> int:
    """Position (BOS = 0, so +1) of the token holding character `char` of the prompt."""
    return 1 + next(i for i, (s, e) in enumerate(offsets) if s <= char < e)


def _last_match(prompt: str, word: str) -> re.Match[str]:
    *_, m = re.finditer(rf"(?<![\w]){re.escape(word)}(?![\w])", prompt, flags=re.IGNORECASE)
    return m


def _suffix_match(ids: list[int], j: int) -> int:
    """How many tokens ending at j equal the tokens ending at the prompt's last one (BOS excluded)."""
    n, last = 0, len(ids) - 1
    while j - n >= 1 and ids[j - n] == ids[last - n]:
        n += 1
    return n


def induction_key(ids: list[int]) -> int:
    """The token after the earlier occurrence of the repeated span: the earlier position whose preceding tokens
    match the prompt's end longest (ties: the latest)."""
    last = len(ids) - 1
    return 1 + max((j for j in range(1, last) if ids[j] == ids[last]), key=lambda j: (_suffix_match(ids, j), j))


def key_positions(task: Task, prompt: str, answer: str, ids: list[int], offsets: list[tuple[int, int]]) -> Key:
    """ids: the prompt's token ids with BOS first; offsets: character spans of ids[1:]."""
    if task in (Task.INDUCTION, Task.INDUCTION_RANDOM):
        return Key((induction_key(ids),))
    if task == Task.IOI:
        names = [(m.group(), m.end() - 1) for m in re.finditer(r"[A-Z][a-z]+", prompt) if m.group() in planted.NAMES]
        io = answer.strip()
        (s,) = {n for n, _ in names} - {io}
        pos = {n: [_token_of_char(offsets, c) for nn, c in names if nn == n] for n in (io, s)}
        return Key((pos[io][0],), tuple(pos[s]), " " + s)
    if task == Task.FACTS:
        word = CAPITAL_OF[answer.strip()]
    elif task == Task.OPPOSITES:
        word = OPPOSITE_OF[answer.strip()]
    else:  # two-hop: the landmark named in the prompt
        lm = max((lm for lm in planted.LANDMARKS if lm.lower() in prompt.lower()), key=len)
        word = lm.removeprefix("the ")  # the name proper: an article is no part of the landmark's identity
    m = _last_match(prompt, word)
    return Key(tuple(range(_token_of_char(offsets, m.start()), _token_of_char(offsets, m.end() - 1) + 1)))


# ---- 4. score ----------------------------------------------------------------------------------------------
def criterion(infl_P: torch.Tensor, span: tuple[int, ...], others: tuple[int, ...]) -> bool:
    """infl_P [P]: embedding influence per position. The span beats `others` (IOI), or holds the most influential
    middle position."""
    if others:
        return bool(infl_P[list(span)].max() > infl_P[list(others)].max())
    middle = infl_P[1:-1]
    return int(middle.argmax()) + 1 in span


def control(infl_P: torch.Tensor, k: Key, rng: random.Random) -> bool | None:
    """The control criterion (None when the middle positions hold no other span of the key's length)."""
    if k.others:  # IOI, labels swapped
        return criterion(infl_P, k.others, k.span)
    n = len(k.span)
    starts = [p for p in range(1, len(infl_P) - n) if not set(range(p, p + n)) & set(k.span)]
    if not starts:
        return None
    p = rng.choice(starts)
    return criterion(infl_P, tuple(range(p, p + n)), ())


def _rank(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _rank(a), _rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def ablation_spearman(lm, tc, tokens: torch.Tensor, attr, signed: torch.Tensor, k: Key, n: int) -> float | None:
    """Step 5 on one graph: graph-predicted vs measured change of the target when each top feature is ablated."""
    from tracer.interventions import FeatureRef, Intervention, intervene
    from tracer.layout import NodeKind
    from tracer.record import record

    lay = attr.layout
    rows = lay.feature_rows()
    if len(rows) < 3:
        return None
    top = rows[signed[rows].abs().topk(min(n, len(rows))).indices]
    target = int(lay.logit_tokens[0])
    minus = lm.tokenizer.encode(k.minus)[0] if k.minus else None
    rec = record(lm.model, tc, tokens)
    measured = []
    for r in top.tolist():
        ref = lay.node(r)
        assert ref.kind == NodeKind.FEATURE
        res = intervene(lm.model, tc, tokens, [Intervention.ablate(FeatureRef(ref.layer, ref.index, ref.pos))], rec=rec)
        d = res.logit_change(target) - (res.logit_change(minus) if minus is not None else 0.0)
        measured.append(d)
    return spearman(-signed[top], torch.tensor(measured, dtype=torch.float64))


# ---- 1-6. run ----------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[Task, TaskResult]:
    from tracer.attribute import TraceConfig, attribute
    from tracer.bundle.evaluate import top1
    from tracer.effects import effects
    from tracer.models import load_model
    from transcoders import DEFAULT_TRANSCODERS, load_transcoders

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    tc = load_transcoders(args.transcoders or DEFAULT_TRANSCODERS, lm.cfg, dtype=torch.float32)
    items = json.loads(args.heldout.read_text())
    tok = lm.tokenizer
    assert tok is not None
    results = {t: TaskResult() for t in TASKS}
    for task in TASKS:
        res, rng = results[task], random.Random(args.seed)
        pool = [it for it in items if it["task"] == task.value]
        random.Random(args.seed).shuffle(pool)
        for it in pool:
            if res.n >= args.per_task:
                break
            res.answered += 1
            answer = tok.encode(it["answer"])[0]  # multi-token words (induction): their first token
            if top1(lm, [it["prompt"]])[0] != answer:
                continue
            enc = tok.inner.encode(it["prompt"], add_special_tokens=False)
            ids = tok.encode_prompt(it["prompt"], lm.cfg.n_ctx, lm.cfg.bos_token_id)
            k = key_positions(task, it["prompt"], it["answer"], ids, list(enc.offsets))
            tokens = torch.tensor(ids)
            cfg = TraceConfig(target=(tok.token_str(answer),), minus=k.minus)
            attr = attribute(lm.model, tc, tokens, tok, cfg)
            eff = effects(attr)
            infl_P = eff.target_influence[attr.layout.embedding_rows(torch.arange(len(ids)))]
            res.n += 1
            ok = criterion(infl_P, k.span, k.others)
            res.passed += ok
            if k.others:
                res.io_beats_s2 += criterion(infl_P, k.span, k.others[-1:])
                res.s1_wins += not ok and bool(infl_P[k.others[0]] >= infl_P[list(k.others)].max())
            c = control(infl_P, k, rng)
            if c is not None:
                res.control_n += 1
                res.control_passed += c
            if args.ablate:
                s = ablation_spearman(lm, tc, tokens, attr, eff.signed_effect, k, args.ablate)
                if s is not None:
                    res.spearman.append(s)
    return results


def summary(results: dict[Task, TaskResult], ablate: int) -> dict:
    rho = [s for r in results.values() for s in r.spearman]
    return {
        "tasks": {t.value: round(r.passed / r.n, 4) if r.n else None for t, r in results.items()},
        "controls": {
            t.value: round(r.control_passed / r.control_n, 4) if r.control_n else None for t, r in results.items()
        },  # fmt: skip
        "spearman": round(sum(rho) / len(rho), 4) if ablate and rho else None,
    }


def table(results: dict[Task, TaskResult], s: dict, seconds: float) -> str:
    lines = [f"{'task':<26}{'traced':>7}{'of':>5}{'pass':>8}{'control':>9}{'spearman':>10}"]
    for t, r in results.items():
        rho = f"{sum(r.spearman) / len(r.spearman):.3f}" if r.spearman else "-"
        p, c = (s[k][t.value] for k in ("tasks", "controls"))
        p, c = ("-" if x is None else f"{x:.0%}" for x in (p, c))
        lines.append(f"{t.value:<26}{r.n:>7}{r.answered:>5}{p:>8}{c:>9}{rho:>10}")
    ioi = results.get(Task.IOI)
    if ioi is not None and ioi.n:
        lines.append(f"ioi diagnostic: IO outweighs the subject's second mention in {ioi.io_beats_s2} / {ioi.n}; "
                     f"the first mention outweighs IO in {ioi.s1_wins} of the {ioi.n - ioi.passed} failures")
    lines.append(f"targets: pass >= 90 %, control <= 30 %; mean Spearman {s['spearman']}; {seconds:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from tracer.models import DEFAULT_MODEL

    ap = argparse.ArgumentParser(prog="python -m benchmarks.ground_truth", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled model)")
    ap.add_argument("--transcoders", type=Path, default=None, help="transcoder directory (default: bundled CLT)")
    ap.add_argument("--heldout", type=Path, default=DEFAULT_MODEL.parent / "planted_heldout.json",
                    help="held-out prompts (default: the bundled planted_heldout.json)")  # fmt: skip
    ap.add_argument("--per-task", type=int, default=30, help="correctly answered prompts traced per task")
    ap.add_argument("--ablate", type=int, default=8, help="features ablated per graph for the Spearman (0: skip)")
    ap.add_argument("--seed", type=int, default=0, help="prompt order and control positions")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    t0 = time.time()
    results = run(args)
    s = summary(results, args.ablate)
    print(json.dumps(s) if args.json else table(results, s, time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
