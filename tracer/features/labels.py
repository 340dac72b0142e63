"""Automatic feature labels (≤ 40 characters) from what the store knows, with no language model.

Rules, each with its confidence in [0, 1]; the label is empty when none passes (silence rather than noise):
1. `peak`: one token (stripped, case-folded) sits at the peak of at least PEAK_SHARE of the top contexts
   (at least MIN_CONTEXTS of them) -> the feature reads that token. Confidence: the share.
2. `logits`: the top output token of the logit lens stands out from the vocabulary (robust z-score, i.e. over
   the median and MAD, ≥ LOGIT_Z) and from the runner-up (gap ≥ LOGIT_GAP standard deviations) -> the feature
   says that token. Confidence: gap / (2 LOGIT_GAP), capped at 1.
3. `inputs`: the top input token's robust z ≥ INPUT_Z and it is the peak token -> it raises rule 1's
   confidence (the weights agree with the data).
4. `next`: when rule 2 does not pass, one token follows the peak in at least PEAK_SHARE of the top contexts and is
   among the feature's top logit-lens tokens -> the feature says that token (data and weights agree).
   Confidence: the share.
Label text: `France → Paris` (rules 1 + 2, rule `peak+logits`), `France` (1), `→ Paris` (2); tokens are
stripped of surrounding spaces and shortened to fit.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

MAX_LEN = 40
PEAK_SHARE = 0.5
MIN_CONTEXTS = 3
LOGIT_Z = 6.0
LOGIT_GAP = 1.0
INPUT_Z = 6.0
RULES = {"peak": f"≥{PEAK_SHARE:.0%} of ≥{MIN_CONTEXTS} top contexts peak on one token",
         "next": f"≥{PEAK_SHARE:.0%} of the top contexts continue with one token that is a top logit-lens token",
         "logits": f"top logit-lens token: robust z ≥ {LOGIT_Z:g}, gap to the next ≥ {LOGIT_GAP:g} std",
         "inputs": f"top input-embedding token (z ≥ {INPUT_Z:g}) agrees with the peak token"}  # fmt: skip


class Label(NamedTuple):
    text: str
    rule: str
    confidence: float


EMPTY = Label("", "none", 0.0)


def _show(token: str, width: int) -> str:
    t = token.strip() or repr(token)[1:-1] or "␣"
    return t if len(t) <= width else t[: width - 1] + "…"


def _common(tokens: list[str]) -> tuple[str, float]:
    """The most common token (stripped, case-folded) among `tokens`, as first spelled, and its share."""
    counts = Counter(t.strip().casefold() for t in tokens if t.strip())
    if len(tokens) < MIN_CONTEXTS or not counts:
        return "", 0.0
    key, c = counts.most_common(1)[0]
    return next(t for t in tokens if t.strip().casefold() == key), c / len(tokens)


def label_feature(peak_tokens: list[str], top_logit: str, logit_z: float, logit_gap: float, top_input: str,
                  input_z: float, next_tokens: list[str] | None = None,
                  top_logits: list[str] | None = None) -> Label:  # fmt: skip
    """One feature's label from its top contexts' peak (and following) tokens and its lens statistics (rules 1-4);
    top_logits: its top logit-lens tokens."""
    reads, says, conf, rules = "", "", 0.0, []
    if len(peak_tokens) >= MIN_CONTEXTS:
        counts = Counter(t.strip().casefold() for t in peak_tokens if t.strip())
        if counts:
            key, c = counts.most_common(1)[0]
            share = c / len(peak_tokens)
            if share >= PEAK_SHARE:
                reads = next(t for t in peak_tokens if t.strip().casefold() == key)
                conf, rules = share, ["peak"]
                if input_z >= INPUT_Z and top_input.strip().casefold() == key:
                    conf, rules = min(1.0, conf + 0.25), ["peak", "inputs"]
    if logit_z >= LOGIT_Z and logit_gap >= LOGIT_GAP:
        says = top_logit
        conf = max(conf, min(1.0, logit_gap / (2 * LOGIT_GAP)))
        rules.append("logits")
    elif next_tokens and top_logits:
        tok, share = _common(next_tokens)
        if share >= PEAK_SHARE and tok.strip().casefold() in {t.strip().casefold() for t in top_logits}:
            says = tok
            conf = max(conf, share)
            rules.append("next")
    if not reads and not says:
        return EMPTY
    if reads and says:
        w = (MAX_LEN - 3) // 2
        text = f"{_show(reads, w)} → {_show(says, w)}"
    elif reads:
        text = _show(reads, MAX_LEN)
    else:
        text = f"→ {_show(says, MAX_LEN - 2)}"
    return Label(text, "+".join(rules), round(conf, 3))
