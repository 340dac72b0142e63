"""Steered generation: decode token by token with feature interventions applied at every position.

1. Each step runs `tracer.interventions.steered_logits` on the sequence so far (prompt + generated tokens), in the
   chosen mode; interventions without a position act on every position after BOS, so each new token is steered.
2. The next token is the argmax of the intervened last-position logits (temperature 0), or a sample from
   softmax(logits / temperature) drawn with a seeded generator.
3. Stop after `n_tokens` new tokens, at the model's EOS token, or at the context window.
With no interventions (or scale 1 everywhere) this is plain decoding of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tracer.errors import ConfigError
from tracer.interventions import Intervention, Mode, check_interventions, steered_logits
from tracer.models import Transformer
from transcoders import Transcoder


@dataclass(frozen=True)
class GenerateConfig:
    n_tokens: int = 10  # new tokens to generate
    temperature: float = 0.0  # 0: greedy; > 0: sample from softmax(logits / temperature)
    seed: int = 0  # seed of the sampler (with temperature > 0)
    mode: Mode = Mode.REPLACEMENT  # how the interventions act (see tracer.interventions)
    stop_at_eos: bool = True  # stop at the model's EOS token

    def __post_init__(self) -> None:
        if self.n_tokens < 0:
            raise ConfigError("the number of tokens to generate must be >= 0")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")


@torch.no_grad()
def generate(model: Transformer, tc: Transcoder, tokens: Sequence[int], interventions: Sequence[Intervention],
             cfg: GenerateConfig | None = None) -> list[int]:  # fmt: skip
    """Prompt token ids (BOS first) -> the new token ids (module docstring, steps 1-3)."""
    cfg = cfg or GenerateConfig()
    check_interventions(interventions, tc, len(tokens))
    gen = torch.Generator().manual_seed(cfg.seed)
    seq = list(tokens)
    for _ in range(cfg.n_tokens):
        if len(seq) >= model.cfg.n_ctx:
            break
        t = torch.tensor(seq, device=model.embed.weight.device)
        logits = steered_logits(model, tc, t, interventions, cfg.mode) if interventions else model(t[None])[0, -1]
        if cfg.temperature == 0:
            nxt = int(logits.argmax())
        else:
            probs = (logits.double() / cfg.temperature).softmax(-1).cpu()
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        seq.append(nxt)
        if cfg.stop_at_eos and nxt == model.cfg.eos_token_id:
            break
    return seq[len(tokens) :]
