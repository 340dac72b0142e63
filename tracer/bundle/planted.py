"""Planted tasks (v5): generated text whose answers are known, with held-out frames and entities never trained on.

Algorithm:
1. Tables: countries and capitals, landmarks (-> country), first names, opposite pairs, induction words.
2. Frames: every task has several TRAINING sentence frames and disjoint HELD-OUT frames; frames have filler
   slots (an adjective `{j}` before the key noun, an adverb `{v}` after the verb) whose held-out fillers are never
   trained, and prompts are preceded by prefixes and filler sentences, again split into training and held-out
   lists. Held-out entities: IOI name pairs (crc32 of the sorted pair) and places/objects; induction words never
   used in training (corpus words ranked 3000-4000 by frequency); random-token induction sequences (fresh
   random draws from the whole vocabulary, `random_token_prompts`); two-hop keeps landmarks whose two-hop
   statement is never trained (compositional diagnostic). Facts and opposites must be memorised, so their
   held-out prompts hold out frames and fillers, not entities.
3. Training text: documents of 3-8 planted sentences, generators drawn with the mix of the training phase
   (`PHASE_MIXES`); induction repeats word spans of 3-20 words after 0-4 filler sentences, sometimes only in
   part. Filler sentences are hand-written or (half the time, when given) natural-text sentences (`natural_fillers`);
   IOI intros and gifts are composed from parts (opener, verb, place, connector; verb, object); in the polish
   phase's stream half of them follow 1-4 words of a natural-text sentence (`PHASE_IOI_LEAD`). Random-token
   induction (spans of any vocabulary tokens, repeated at any distance) is generated on the fly by the trainer
   (tracer/bundle/train.py), not here. Seeded -> identical text for identical arguments.
4. Held-out prompts: every task's held-out frames x its items, each with the single expected answer (leading
   space, as it follows the prompt), written to `planted_heldout.json` (plus the random-token prompts, which need
   the tokenizer).
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from tracer.bundle.planted_frames import (  # noqa: F401  (step 2; re-exported)
    _ADV_V3,
    FACT_HELDOUT,
    FACT_TRAIN,
    HELDOUT_ADJ,
    HELDOUT_ADV,
    HELDOUT_FILLERS,
    HELDOUT_PREFIXES,
    HELDOUT_SLOT_ADV,
    INDUCTION_SEPS_HELDOUT,
    INDUCTION_SEPS_TRAIN,
    IOI_CONNECTORS_TRAIN,
    IOI_GIFT_VERBS_TRAIN,
    IOI_GIFTS_HELDOUT,
    IOI_HELDOUT_WORDS,
    IOI_INTROS_HELDOUT,
    IOI_OBJECTS_TRAIN,
    IOI_OPENERS_TRAIN,
    IOI_PLACES_HELDOUT,
    IOI_PLACES_TRAIN,
    IOI_VERBS_TRAIN,
    ONE_HOP_TRAIN,
    OPP_HELDOUT,
    OPP_HELDOUT_ADJ,
    OPP_TRAIN,
    OPP_TRAIN_ADJ,
    TRAIN_ADJ,
    TRAIN_ADV,
    TRAIN_FILLERS,
    TRAIN_PREFIXES,
    TWO_HOP_HELDOUT,
    TWO_HOP_TRAIN,
    TWO_HOP_VERBS_HELDOUT,
    TWO_HOP_VERBS_TRAIN,
)
from tracer.bundle.planted_tables import (  # noqa: F401  (step 1; re-exported: callers read planted.CAPITALS etc.)
    CAPITALS,
    COMPOSITIONAL_LANDMARKS,
    INDUCTION_COMMON_WORDS,
    INDUCTION_HELDOUT_WORDS,
    INDUCTION_TRAIN_WORDS,
    LANDMARKS,
    NAMES,
    OPPOSITES,
    WORDS,
)


class Task(StrEnum):
    FACTS = "facts"
    TWO_HOP = "two_hop"
    TWO_HOP_COMPOSITIONAL = "two_hop_compositional"  # diagnostic only: never-trained two-hop landmarks
    IOI = "ioi"
    INDUCTION = "induction"  # corpus words never used in training, repeated after held-out filler
    INDUCTION_RANDOM = "induction_random_tokens"  # random tokens from the whole vocabulary
    INDUCTION_RARE_WORDS = "induction_rare_words"  # diagnostic: rare words with barely trained embeddings
    OPPOSITES = "opposites"


class Gen(StrEnum):
    """Training-sentence generators."""

    FACTS = "facts"
    TWO_HOP = "two_hop"  # includes the one-hop landmark facts
    IOI = "ioi"
    INDUCTION = "induction"  # word sequences over a wide corpus vocabulary (held-out words excluded)
    OPPOSITES = "opposites"


# share of planted sentences per generator; one mix, two phases (different seeds: more distinct text)
MIX = {Gen.FACTS: 0.18, Gen.TWO_HOP: 0.13, Gen.IOI: 0.32, Gen.INDUCTION: 0.22, Gen.OPPOSITES: 0.15}
# planted streams: phase 0's, phase 1's (phase 2 reuses it) and the polish phase's (tracer/bundle/train.py), with
# the share of IOI sentences led by natural-text words in each
PHASE_MIXES = (MIX, MIX, MIX)
PHASE_IOI_LEAD = (0.0, 0.0, 0.5)
TASK_WEIGHTS = MIX


# ---- 1. tables: tracer/bundle/planted_tables.py ----------------------------------------------------------


# ---- 2. frames and fillers: tracer/bundle/planted_frames.py ----------------------------------------------


@dataclass(frozen=True)
class Prompt:
    task: Task
    prompt: str
    answer: str  # with its leading space, e.g. " Paris"


def _first(capital: str) -> str:
    """The expected answer token of a capital: its first word with a leading space (" Buenos")."""
    return " " + capital.split()[0]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _say(prefix: str, sentence: str) -> str:
    return prefix + sentence if prefix else _cap(sentence)


def ioi_pair_held_out(a: str, b: str) -> bool:
    """One name pair in ten (either order) never appears together in training text."""
    return zlib.crc32("|".join(sorted((a, b))).encode()) % 10 == 0


def _slots(rng: random.Random, adj: list[str] = TRAIN_ADJ) -> dict[str, str]:
    return {"j": rng.choice(adj), "v": rng.choice(TRAIN_ADV)}


def _heldout_slots(rng: random.Random, adj: list[str], held_adj: list[str]) -> dict[str, str]:
    """At least one held-out filler (adjective or adverb), so no held-out prompt is a prefix of training text."""
    if rng.random() < 0.5:
        return {"j": rng.choice(held_adj), "v": rng.choice(HELDOUT_SLOT_ADV + HELDOUT_ADV)}
    return {"j": rng.choice(adj + held_adj), "v": rng.choice(HELDOUT_ADV)}


# ---- 3. training sentences ---------------------------------------------------------------------------------
def _fact(rng: random.Random) -> str:
    c = rng.choice(list(CAPITALS))
    return _say(rng.choice(TRAIN_PREFIXES), rng.choice(FACT_TRAIN).format(c=c, a=CAPITALS[c], **_slots(rng)))


def _two_hop(rng: random.Random) -> str:
    lm = rng.choice(list(LANDMARKS))
    c = LANDMARKS[lm]
    if lm in COMPOSITIONAL_LANDMARKS or rng.random() < 0.4:
        return _say(rng.choice(TRAIN_PREFIXES), rng.choice(ONE_HOP_TRAIN).format(l=lm, c=c))
    frame = rng.choice(TWO_HOP_TRAIN)
    s = frame.format(l=lm, a=CAPITALS[c], verb=rng.choice(TWO_HOP_VERBS_TRAIN), **_slots(rng))
    return _say(rng.choice(TRAIN_PREFIXES), s)


def _ioi(rng: random.Random, natural: list[str] | None = None, lead_p: float = 0.0) -> str:
    """An IOI sentence; `lead_p` of the time (given `natural`) after 1-4 words of a natural-text sentence, so
    that the names are found after any preceding words, not only at a sentence start (v4: an unseen opener such as
    "On Monday" broke IOI for one name order)."""
    lead = ""
    if natural and lead_p and rng.random() < lead_p:
        lead = " ".join(rng.choice(natural).split()[: rng.randint(1, 4)]) + " "
    while True:
        x, y = rng.sample(NAMES, 2)
        if not ioi_pair_held_out(x, y):
            s, io = (y, x) if rng.random() < 0.5 else (x, y)  # either name may be the subject (ABB and BAB)
            p = rng.choice(IOI_PLACES_TRAIN)
            if rng.random() < 0.1:
                intro = f"When {x} met {y} at {p}, {s}"
            else:
                verb, conn = rng.choice(IOI_VERBS_TRAIN), rng.choice(IOI_CONNECTORS_TRAIN)
                intro = f"{rng.choice(IOI_OPENERS_TRAIN)}{x} and {y} {verb} {p}{conn}{s}"
            gift = f"{rng.choice(IOI_GIFT_VERBS_TRAIN)} {rng.choice(IOI_OBJECTS_TRAIN)}"
            return f"{lead}{_cap(intro)} {gift} to {io}."


def _filler(rng: random.Random, natural: list[str] | None) -> str:
    """A filler sentence: half the time a natural-text sentence (when given), so that planted prompts work after
    any preceding text, not only after the few hand-written fillers."""
    return rng.choice(natural) if natural and rng.random() < 0.5 else rng.choice(TRAIN_FILLERS)


def _induction(rng: random.Random, words: list[str] | None = None, natural: list[str] | None = None) -> str:
    """A span of 3-20 words, 0-4 filler sentences, then the span again (whole or in part)."""
    seq = rng.sample(words or INDUCTION_TRAIN_WORDS, rng.randint(3, 20))
    fill = " ".join(_filler(rng, natural) for _ in range(rng.choice([0, 0, 1, 1, 2, 4])))
    sep = rng.choice(INDUCTION_SEPS_TRAIN)
    # partial repeats are rare: they teach that a copy may stop at any word ("." was 15 of 26 induction errors)
    again = seq[: rng.randint(2, len(seq))] if rng.random() < 0.1 else seq
    return " ".join(seq) + sep + (fill + " " if fill else "") + " ".join(again) + "."


def wide_words(texts: Iterable[str], n: int = 3000) -> list[str]:
    """The n most frequent lowercase words (3+ letters) of `texts`, held-out induction words excluded."""
    counts = Counter(w for t in texts for w in re.findall(r"(?<![\w'-])[a-z]{3,}(?![\w'-])", t))
    for w in INDUCTION_HELDOUT_WORDS + INDUCTION_COMMON_WORDS:
        counts.pop(w, None)
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def heldout_phrases() -> list[str]:
    """Phrases of the held-out prompts that no training text may contain (frames' words, fillers, separators)."""
    return [
        *HELDOUT_PREFIXES, *HELDOUT_FILLERS, *IOI_PLACES_HELDOUT, *IOI_GIFTS_HELDOUT, *HELDOUT_ADV,
        *TWO_HOP_VERBS_HELDOUT, *IOI_HELDOUT_WORDS, *INDUCTION_SEPS_HELDOUT,
        *(a + "capital" for a in HELDOUT_ADJ), *(a + "opposite" for a in OPP_HELDOUT_ADJ),
    ]  # fmt: skip


def natural_fillers(texts: Iterable[str], n: int = 20_000, seed: int = 0) -> list[str]:
    """Up to n sentences of `texts` (20-100 characters, capitalised, ending in ".") usable as training filler:
    none contains a held-out phrase, a held-out or test induction word, or a first name (an IOI pair)."""
    banned_words = set(INDUCTION_HELDOUT_WORDS + INDUCTION_COMMON_WORDS) | {name.lower() for name in NAMES}
    banned = [p.strip().rstrip(".").lower() for p in heldout_phrases()]  # "Listen carefully" of "Listen carefully."
    out = []
    for t in texts:
        for sent in re.split(r"(?<=\.)\s+", " ".join(t.split())):
            low = sent.lower()
            if not (20 <= len(sent) <= 100 and sent[0].isupper() and sent.endswith(".") and sent.isascii()):
                continue
            if set(re.findall(r"[a-z]+", low)) & banned_words or any(b in low for b in banned):
                continue
            out.append(sent)
    out = sorted(set(out))
    random.Random(seed).shuffle(out)
    return out[:n]


def _opposite(rng: random.Random) -> str:
    x, y = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        x, y = y, x
    s = rng.choice(OPP_TRAIN).format(x=x, y=y, **_slots(rng, OPP_TRAIN_ADJ))
    return _say(rng.choice(TRAIN_PREFIXES), s)


_GEN = {Gen.FACTS: _fact, Gen.TWO_HOP: _two_hop, Gen.IOI: _ioi, Gen.OPPOSITES: _opposite}


def training_documents(
    n_chars: int,
    seed: int = 0,
    mix: dict[Gen, float] | None = None,
    words: list[str] | None = None,
    natural: list[str] | None = None,
    ioi_lead: float = 0.0,
) -> list[str]:
    """Planted training documents (3-8 sentences, some filler) totalling about n_chars characters; deterministic.

    `mix`: share of sentences per generator (default `TASK_WEIGHTS`); `words`: vocabulary of INDUCTION;
    `natural`: natural-text filler sentences (`natural_fillers`), mixed with the hand-written ones; `ioi_lead`: share
    of IOI sentences after 1-4 words of one of them (`PHASE_IOI_LEAD`)."""
    rng = random.Random(seed)
    mix = mix or TASK_WEIGHTS
    tasks, weights = list(mix), list(mix.values())
    gens = _GEN | {Gen.INDUCTION: lambda r: _induction(r, words, natural),
                   Gen.IOI: lambda r: _ioi(r, natural, ioi_lead)}  # fmt: skip
    docs, total = [], 0
    while total < n_chars:
        parts = [gens[t](rng) for t in rng.choices(tasks, weights, k=rng.randint(3, 8))]
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            parts.insert(rng.randrange(len(parts) + 1), _filler(rng, natural))
        doc = " ".join(parts)
        docs.append(doc)
        total += len(doc) + 1
    return docs


# ---- 4. held-out prompts -----------------------------------------------------------------------------------
def _lead(rng: random.Random, sentence: str) -> str:
    """Held-out prefix, and half the time a held-out filler sentence before it."""
    s = _say(rng.choice(HELDOUT_PREFIXES + [""]), sentence)
    return f"{rng.choice(HELDOUT_FILLERS)} {s}" if rng.random() < 0.5 else s


def _induction_prompt(rng: random.Random, words: list[str]) -> tuple[str, str]:
    seq = rng.sample(words, rng.randint(4, 12))
    k = rng.randint(2, len(seq) - 1)
    fill = " ".join(rng.sample(HELDOUT_FILLERS, rng.randint(0, 2)))
    sep = rng.choice(INDUCTION_SEPS_HELDOUT)
    return " ".join(seq) + sep + (fill + " " if fill else "") + " ".join(seq[:k]), " " + seq[k]


def heldout_prompts(seed: int = 1234, n_induction: int = 100) -> list[Prompt]:
    """Held-out prompts for every task but INDUCTION_RANDOM (see `random_token_prompts`), one answer token each."""
    rng = random.Random(seed)
    out: list[Prompt] = []
    for c, a in CAPITALS.items():
        t = rng.choice(FACT_HELDOUT).format(c=c, **_heldout_slots(rng, TRAIN_ADJ, HELDOUT_ADJ))
        out.append(Prompt(Task.FACTS, _lead(rng, t), _first(a)))
    for lm, c in LANDMARKS.items():
        task = Task.TWO_HOP_COMPOSITIONAL if lm in COMPOSITIONAL_LANDMARKS else Task.TWO_HOP
        for verb in TWO_HOP_VERBS_HELDOUT:
            t = rng.choice(TWO_HOP_HELDOUT).format(l=lm, verb=verb, **_heldout_slots(rng, TRAIN_ADJ, HELDOUT_ADJ))
            out.append(Prompt(task, _lead(rng, t), _first(CAPITALS[c])))
    pairs = [(a, b) for a in NAMES for b in NAMES if a < b and ioi_pair_held_out(a, b)]
    for a, b in pairs:
        for x, y in ((a, b), (b, a)):
            s, io = (y, x) if rng.random() < 0.5 else (x, y)
            intro = rng.choice(IOI_INTROS_HELDOUT).format(x=x, y=y, s=s, p=rng.choice(IOI_PLACES_HELDOUT))
            out.append(Prompt(Task.IOI, f"{intro} {rng.choice(IOI_GIFTS_HELDOUT)} to", " " + io))
    for _ in range(n_induction):
        out.append(Prompt(Task.INDUCTION_RARE_WORDS, *_induction_prompt(rng, INDUCTION_HELDOUT_WORDS)))
    for x, y in OPPOSITES:
        for xx, yy in ((x, y), (y, x)):
            t = rng.choice(OPP_HELDOUT).format(x=xx, **_heldout_slots(rng, OPP_TRAIN_ADJ, OPP_HELDOUT_ADJ))
            out.append(Prompt(Task.OPPOSITES, _lead(rng, t), " " + yy))
    for _ in range(n_induction):
        out.append(Prompt(Task.INDUCTION, *_induction_prompt(rng, INDUCTION_COMMON_WORDS)))
    return out


def random_token_prompts(tok, n: int = 100, seed: int = 4321) -> list[Prompt]:
    """Induction on random tokens from the whole vocabulary: span S (4-16 tokens), 0-40 random tokens, then
    S[:k] -> S[k]. Tokens are redrawn until the prompt text re-encodes to exactly the drawn ids (byte-level BPE
    could merge across a boundary) and the answer is one token."""
    rng = random.Random(seed)
    vocab = tok.get_vocab_size()
    out: list[Prompt] = []

    def draw(ids: list[int]) -> list[int]:
        while True:
            t = rng.randrange(1, vocab)
            cand = ids + [t]
            if tok.encode(tok.decode(cand), add_special_tokens=False).ids == cand:
                return cand

    while len(out) < n:
        span: list[int] = []
        for _ in range(rng.randint(4, 16)):
            span = draw(span)
        gap: list[int] = list(span)
        for _ in range(rng.randint(0, 40)):
            gap = draw(gap)
        k = rng.randint(2, len(span) - 1)
        ids = gap + span[:k]
        text, answer = tok.decode(ids), tok.decode([span[k]])
        if tok.encode(text, add_special_tokens=False).ids == ids and tok.encode(answer).ids == [span[k]]:
            out.append(Prompt(Task.INDUCTION_RANDOM, text, answer))
    return out


def answer_words() -> set[str]:
    """Answer words that should be single tokens (the tokenizer boosts them): all but the induction tasks', whose
    first token is the answer."""
    induction = (Task.INDUCTION, Task.INDUCTION_RARE_WORDS)
    answers = {p.answer.strip() for p in heldout_prompts() if p.task not in induction}
    return answers | {_first(a).strip() for a in CAPITALS.values()} | set(NAMES)
