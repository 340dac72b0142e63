"""Feature interventions: set, scale or ablate transcoder features and watch the logits move.

An `Intervention` names features (layer, index) — one, or several for a supernode — optionally at one position
each (default: every position after BOS), and an action: set to a value, scale by a factor, or ablate (set to 0).
Three modes differ in what they hold fixed (all three start from one recorded clean run, tracer.record):

- CONSTRAINED: attention patterns, norm denominators, error vectors AND every other feature's activation are
  frozen at the recorded values; only the intervened activations change, so only direct paths move. The change of
  each other feature's pre-activation and of each demeaned logit is exactly the graph's edge from the intervened
  feature (times the change of its activation). Runs `tracer.record.frozen_forward`.
- REPLACEMENT (default): patterns, norm denominators and error vectors frozen; features are re-encoded layer by
  layer from the current transcoder input, so downstream features respond (turn on, off, or change) as they
  would in the local replacement model.
- FREE: the real model; at each layer the features are encoded from the real input of that run, the intervened
  ones edited, and the change Δa decoded into the MLP outputs (Δa·W_dec at every layer the feature writes to).
  Everything else — attention, norms, the true MLPs and hence the error — is recomputed.

Algorithm of `intervene`:
1. record: one clean forward pass (logits, activations, frozen patterns and scales, errors).
2. check: every feature exists in the transcoder set and every position lies in the prompt (InterventionError).
3. run: the mode's forward pass inside a context manager that always removes its hooks:
   constrained: acts' = edit(recorded acts) -> frozen_forward;
   replacement/free: at layer l, a = encode_l(x_l); a' = edit(a); the MLP output becomes the recorded output
   (replacement) or the true output (free) + Σ_{s ≤ l} Δa_s·W_dec[s → l] (+ skip(x_l) - skip(x_l recorded) in
   replacement mode, where the skip path reads the current input).
4. result: logits before/after [P, vocab], activations and pre-activations before/after [P, L, F].
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

import torch

from tracer.attribute import phase
from tracer.errors import TracerError
from tracer.models import HookPoint, Site, Transformer
from tracer.models.hooks import HookFn
from tracer.record import Record, frozen_forward, frozen_sites, record
from transcoders import Transcoder


class InterventionError(TracerError):
    """An intervention names a feature, position or value that does not exist or is not a number."""


class Action(str, Enum):
    SET = "set"  # activation := value
    SCALE = "scale"  # activation := value · activation
    ABLATE = "ablate"  # activation := 0


class Mode(str, Enum):
    CONSTRAINED = "constrained"  # only direct paths move (everything else frozen): reproduces the graph's edges
    REPLACEMENT = "replacement"  # patterns, norms, errors frozen; downstream features re-encoded
    FREE = "free"  # the real model with the features' decoder contributions changed in the MLP outputs


class FeatureRef(NamedTuple):
    """A transcoder feature (layer, index) at one position, or at every position after BOS (pos None)."""

    layer: int
    index: int
    pos: int | None = None

    def __repr__(self) -> str:
        return f"{self.layer}/{self.index}" + ("" if self.pos is None else f"@{self.pos}")


@dataclass(frozen=True)
class Intervention:
    """One action on one feature or a supernode (several features); `value` is the set value or scale factor."""

    features: tuple[FeatureRef, ...]
    action: Action
    value: float = 0.0
    label: str = ""  # e.g. the supernode's name, for reports

    def __post_init__(self) -> None:
        if not self.features:
            raise InterventionError("an intervention needs at least one feature")
        if not isinstance(self.value, int | float) or not math.isfinite(self.value):
            raise InterventionError(f"intervention value must be a finite number, got {self.value!r}")

    @classmethod
    def ablate(cls, *features: FeatureRef, label: str = "") -> Intervention:
        return cls(tuple(features), Action.ABLATE, 0.0, label)

    @classmethod
    def scale(cls, factor: float, *features: FeatureRef, label: str = "") -> Intervention:
        return cls(tuple(features), Action.SCALE, factor, label)

    @classmethod
    def set(cls, value: float, *features: FeatureRef, label: str = "") -> Intervention:
        return cls(tuple(features), Action.SET, value, label)

    def edit(self, layer: int, acts_PF: torch.Tensor) -> torch.Tensor:
        """Apply this intervention's edits at `layer` to activations [P, F] (in place; returns them)."""
        for f in self.features:
            if f.layer != layer:
                continue
            pos = slice(1, None) if f.pos is None else f.pos
            if self.action == Action.ABLATE:
                acts_PF[pos, f.index] = 0
            elif self.action == Action.SCALE:
                acts_PF[pos, f.index] *= self.value
            else:
                acts_PF[pos, f.index] = self.value
        return acts_PF


def check_interventions(interventions: Sequence[Intervention], tc: Transcoder, n_pos: int) -> None:
    """Step 2: every feature exists in `tc` and every position lies in a prompt of n_pos tokens."""
    L, F = tc.cfg.n_layers, tc.cfg.n_features
    for iv in interventions:
        for f in iv.features:
            if not (0 <= f.layer < L and 0 <= f.index < F):
                raise InterventionError(f"unknown feature {f!r}: the transcoders have {L} layers of {F} features")
            if f.pos is not None and not 0 <= f.pos < n_pos:
                raise InterventionError(f"position {f.pos} of feature {f!r} is past the prompt ({n_pos} tokens, "
                                        f"positions 0-{n_pos - 1})")  # fmt: skip


def edit_all(interventions: Sequence[Intervention], layer: int, acts_PF: torch.Tensor) -> torch.Tensor:
    """A copy of activations [P, F] at `layer` with every intervention applied in order."""
    out = acts_PF.clone()
    for iv in interventions:
        iv.edit(layer, out)
    return out


@dataclass
class InterventionResult:
    """Before = the clean run (recorded); after = the run with the interventions, in `mode`."""

    mode: Mode
    tokens: torch.Tensor  # [P] int64
    logits_before: torch.Tensor  # [P, vocab]
    logits_after: torch.Tensor  # [P, vocab]
    acts_before: torch.Tensor  # [P, L, F] replacement-model activations (0 at BOS, as in the graph)
    acts_after: torch.Tensor  # [P, L, F] constrained: only intervened entries differ; else re-encoded + edited
    pre_before: torch.Tensor  # [P, L, F] encoder pre-activations W_enc·x (bias excluded: the graph's targets)
    pre_after: torch.Tensor  # [P, L, F]
    interventions: list[Intervention] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # phase (record, run, result) -> seconds

    def demeaned(self, logits: torch.Tensor, token: int, pos: int = -1) -> float:
        """logit of `token` minus the mean logit at `pos` (what the graph's logit nodes measure)."""
        return float(logits[pos, token] - logits[pos].mean())

    def logit_change(self, token: int, pos: int = -1) -> float:
        """Change of the demeaned logit of `token` at `pos` (the quantity the graph's edges predict)."""
        return self.demeaned(self.logits_after, token, pos) - self.demeaned(self.logits_before, token, pos)

    def top(self, k: int = 5, pos: int = -1, after: bool = True) -> list[tuple[int, float]]:
        """The k most probable next tokens at `pos` as (token id, probability)."""
        p = (self.logits_after if after else self.logits_before)[pos].double().softmax(-1)
        v, i = p.topk(min(k, p.numel()))
        return list(zip(i.tolist(), v.tolist(), strict=True))


def _pre(tc: Transcoder, layer: int, x_PD: torch.Tensor) -> torch.Tensor:
    """Encoder pre-activations without the bias [P, F] (the graph's feature targets)."""
    return (x_PD.to(tc.W_enc.dtype) @ tc.W_enc[layer].T).to(x_PD.dtype)


def _encode(tc: Transcoder, layer: int, x_PD: torch.Tensor) -> torch.Tensor:
    return tc.encode_layer(x_PD.to(tc.W_enc.dtype), layer).to(x_PD.dtype)


def _decoded(tc: Transcoder, layer: int, delta_PF: torch.Tensor) -> torch.Tensor:
    """Σ_f Δa[p, f]·W_dec[layer, f → l] for every output layer l: [P, L, D] (only changed features read)."""
    idx = delta_PF.abs().sum(0).nonzero()[:, 0]
    rows = tc.decoder_rows(layer, idx).to(delta_PF.dtype)  # [n, L, D]
    return torch.einsum("pn,nld->pld", delta_PF[:, idx], rows)


@dataclass
class _Run:
    """What a spliced forward pass collects: per layer, the transcoder input [P, D] and activations [P, F]."""

    inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    acts: dict[int, torch.Tensor] = field(default_factory=dict)


@contextmanager
def spliced_forward(model: Transformer, tc: Transcoder, rec: Record | None, interventions: Sequence[Intervention],
                    mode: Mode, n_pos: int = 0) -> Iterator[_Run]:  # fmt: skip
    """Step 3 for REPLACEMENT and FREE: inside the block, `model(rec.tokens[None])` runs with features re-encoded
    layer by layer and edited, their change decoded into the MLP outputs. Yields the run's inputs and activations
    (activations relative to the replacement model's: acts = recorded + Δa). FREE needs no record: pass rec None
    and the number of tokens n_pos."""
    replacement = mode == Mode.REPLACEMENT
    if rec is None and replacement:
        raise ValueError("replacement mode needs the record of a clean run")
    L, P = model.cfg.n_layers, rec.n_pos if rec is not None else n_pos
    run = _Run()
    dtype = rec.mlp_out.dtype if rec is not None else model.embed.weight.dtype
    pending = torch.zeros(P, L, model.cfg.d_model, dtype=dtype)  # Σ Δa·W_dec written so far

    def keep_input(layer: int) -> HookFn:
        def fn(x: torch.Tensor) -> None:
            run.inputs[layer] = x[0]

        return fn

    def mlp_out(layer: int) -> HookFn:
        def fn(true_out: torch.Tensor) -> torch.Tensor:
            x = run.inputs[layer]
            a = _encode(tc, layer, x)
            if not replacement:  # free: Δa against this run's real activations
                delta = edit_all(interventions, layer, a) - a
                run.acts[layer] = (a + delta).index_fill(0, zero, 0.0)
                pending.add_(_decoded(tc, layer, delta))
                return true_out + pending[None, :, layer]
            assert rec is not None
            # replacement: Δa against the recorded input's encoding (bitwise the same function), so an unedited
            # run reproduces the record exactly
            delta = edit_all(interventions, layer, a) - _encode(tc, layer, rec.tc_input[:, layer])
            run.acts[layer] = rec.acts[:, layer] + delta
            pending.add_(_decoded(tc, layer, delta))
            out = rec.mlp_out[:, layer] + pending[:, layer]
            if tc.W_skip is not None:  # the skip path reads the current input
                dx = (x - rec.tc_input[:, layer]).to(tc.W_enc.dtype)
                out = out + (dx @ tc.W_skip[layer].T).to(out.dtype)
            return out[None]

        return fn

    zero = torch.zeros(1, dtype=torch.long)
    fns = frozen_sites(rec, L) if rec is not None and replacement else {}
    for i in range(L):
        fns[Site(tc.cfg.input_hook, i)] = keep_input(i)
        fns[Site(HookPoint.MLP_OUT, i)] = mlp_out(i)
    with model.hooks.attached(fns):
        yield run


@torch.no_grad()
def intervene(
    model: Transformer,
    tc: Transcoder,
    tokens: torch.Tensor,
    interventions: Sequence[Intervention],
    mode: Mode = Mode.REPLACEMENT,
    rec: Record | None = None,
) -> InterventionResult:
    """tokens [P] (BOS first) -> InterventionResult (module docstring, steps 1-4). `rec`: a record of these
    tokens to reuse (e.g. for many interventions on one prompt)."""
    mode = Mode(mode)
    t: dict[str, float] = {}
    check_interventions(interventions, tc, rec.n_pos if rec is not None else int(tokens.numel()))  # 2. first: cheap
    with phase("record", t):  # 1.
        rec = rec if rec is not None else record(model, tc, tokens)
    L = model.cfg.n_layers
    with phase("run", t):  # 3.
        if mode == Mode.CONSTRAINED:
            acts = torch.stack([edit_all(interventions, i, rec.acts[:, i]) for i in range(L)], 1)
            with frozen_forward(model, tc, rec, acts, rec.errors) as inputs:
                logits = model(rec.tokens[None])[0]
            x = inputs
        else:
            with spliced_forward(model, tc, rec, interventions, mode) as run:
                logits = model(rec.tokens[None])[0]
            acts, x = torch.stack([run.acts[i] for i in range(L)], 1), run.inputs
    with phase("result", t):  # 4.
        pre_before = torch.stack([_pre(tc, i, rec.tc_input[:, i]) for i in range(L)], 1)
        pre_after = torch.stack([_pre(tc, i, x[i]) for i in range(L)], 1)
    return InterventionResult(mode, rec.tokens, rec.logits, logits, rec.acts, acts, pre_before, pre_after,
                              list(interventions), t)  # fmt: skip


@torch.no_grad()
def steered_logits(model: Transformer, tc: Transcoder, tokens: torch.Tensor, interventions: Sequence[Intervention],
                   mode: Mode = Mode.REPLACEMENT) -> torch.Tensor:  # fmt: skip
    """Last-position logits [vocab] with the interventions applied; FREE mode skips the clean record (one forward
    pass), which steered generation uses at every step."""
    mode = Mode(mode)
    if mode != Mode.FREE:
        return intervene(model, tc, tokens, interventions, mode).logits_after[-1]
    check_interventions(interventions, tc, int(tokens.numel()))
    with spliced_forward(model, tc, None, interventions, mode, n_pos=int(tokens.numel())):
        return model(tokens[None])[0, -1]
