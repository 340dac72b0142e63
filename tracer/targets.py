"""Logit targets: which output directions the graph explains, and how much each weighs.

1. Default: softmax of the last position's logits; the top tokens, at most `max_n_logits`, until their cumulative
   probability reaches `desired_logit_prob`; weight = probability.
2. Custom: named tokens (`--target " Paris"`, repeatable), weight = their probability; or one logit difference
   (`--target " Paris" --minus " London"`), weight 1.
3. Each direction is a mean-centred unembedding row u = W_U[v] - mean_v W_U[v] (the demeaned logit), read after the
   final norm; a difference uses W_U[a] - W_U[b] (the means cancel).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tracer.errors import ConfigError
from tracer.models import Tokenizer


class LogitTargets(NamedTuple):
    token_ids: torch.Tensor  # [K] int64 (for a difference: the first token)
    labels: list[str]  # [K] readable target names
    weights: torch.Tensor  # [K] probability (or 1 for a difference)
    directions: torch.Tensor  # [K, D] read-out vectors applied to the final normalised residual


def _single_token(tok: Tokenizer, text: str) -> int:
    ids = tok.encode(text)
    if len(ids) != 1:
        raise ConfigError(f"target {text!r} is {len(ids)} tokens, not one; pick a single-token target")
    return ids[0]


def select_targets(
    logits: torch.Tensor,
    unembed: torch.Tensor,
    tok: Tokenizer | None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    target: list[str] | None = None,
    minus: str | None = None,
) -> LogitTargets:
    """logits [vocab] at the last position, unembed [vocab, D] -> LogitTargets."""
    probs = logits.double().softmax(-1)
    name = (lambda i: tok.token_str(i)) if tok is not None else (lambda i: f"#{i}")
    if target:
        if tok is None:
            raise ConfigError("custom targets need a tokenizer")
        ids = [_single_token(tok, t) for t in target]
        if minus is not None:
            if len(ids) != 1:
                raise ConfigError("--minus takes exactly one --target")
            b = _single_token(tok, minus)
            u = (unembed[ids[0]] - unembed[b])[None]
            label = f"{name(ids[0])} − {name(b)}"
            return LogitTargets(torch.tensor(ids), [label], torch.ones(1, dtype=torch.float64), u)
    else:
        if minus is not None:
            raise ConfigError("--minus needs a --target")
        top = probs.topk(min(max_n_logits, probs.numel()))
        k = int((top.values.cumsum(0) < desired_logit_prob).sum()) + 1  # smallest prefix reaching the mass
        ids = top.indices[: min(k, len(top.indices))].tolist()
    idx = torch.tensor(ids)
    directions = unembed[idx] - unembed.mean(0, keepdim=True)
    return LogitTargets(idx, [name(i) for i in ids], probs[idx], directions)
