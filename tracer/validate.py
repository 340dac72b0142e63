"""Validate a graph against the model: do the nodes it calls important move the target when ablated?

For one traced prompt (its unpruned Attribution, pruned node mask and primary target, logit target 0):
1. candidates: the pruned graph's top-N features by influence, and every supernode (several features).
2. predict: each candidate's influence (probability-weighted, tracer.prune), influence on the primary target
   alone and signed total effect on it (tracer.effects; a supernode's members held, so paths through the group
   are not counted twice). Ablating it is predicted to move the target by -signed effect.
3. measure: ablate each candidate (its features at their positions) in the chosen mode (tracer.interventions)
   and read the change of the target's demeaned logit (for a --minus graph: of the logit difference).
4. compare: Spearman(-signed effect, measured change), Spearman(influence, |measured change|) and the same for
   the target influence, sign agreement among candidates that moved the target, the worst disagreements (largest
   rank differences).
5. completeness: ablate every active feature outside the pruned graph (replacement mode: errors held) and report
   the share of the target's demeaned logit that survives; the same with every feature ablated, for contrast.
Spearman = Pearson correlation of the ranks (ties get their average rank).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tracer.effects import effects, signed_total_effect
from tracer.interventions import FeatureRef, Intervention, Mode, intervene
from tracer.layout import NodeKind
from tracer.models import Transformer
from tracer.record import Record, record
from tracer.result import Attribution
from transcoders import Transcoder


def ranks(x: torch.Tensor) -> torch.Tensor:
    """[n] float64 ranks 1..n, ties sharing their average rank."""
    x = x.double()
    order = x.argsort(stable=True)
    r = torch.empty_like(x)
    r[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for v in x.unique():  # average the ranks of tied values
        tie = x == v
        if int(tie.sum()) > 1:
            r[tie] = r[tie].mean()
    return r


def spearman(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Spearman rank correlation of two equally long sequences (NaN when either is constant or n < 2)."""
    a, b = ranks(torch.as_tensor(x, dtype=torch.float64)), ranks(torch.as_tensor(y, dtype=torch.float64))
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


@dataclass
class Candidate:
    """One ablated node or supernode with the graph's predictions and the measured change of the target."""

    label: str  # node id, or the supernode's label
    features: list[FeatureRef]
    influence: float  # probability-weighted influence (sum over members for a supernode)
    target_influence: float  # influence on the primary target alone (sum over members)
    signed_effect: float  # signed total effect on the primary target (members held for a supernode)
    measured: float = math.nan  # measured change of the target when ablated

    @property
    def predicted(self) -> float:
        return -self.signed_effect


@dataclass
class Completeness:
    target_before: float  # demeaned target logit of the clean run
    outside_ablated: float  # ... with every feature outside the pruned graph ablated (errors held)
    all_ablated: float  # ... with every feature ablated (errors held)
    n_outside: int  # features ablated outside the graph
    surviving: float = math.nan  # outside_ablated / target_before: the share of the target logit the graph keeps

    def __post_init__(self) -> None:
        self.surviving = self.outside_ablated / self.target_before if self.target_before else math.nan


@dataclass
class Validation:
    mode: str
    target: str
    candidates: list[Candidate]
    spearman_signed: float  # Spearman(-signed effect, measured change)
    spearman_influence: float  # Spearman(influence, |measured change|)
    spearman_target_influence: float  # Spearman(target influence, |measured change|)
    sign_agreement: float  # share of candidates that moved the target whose predicted sign was right
    worst: list[str] = field(default_factory=list)  # labels of the largest rank disagreements
    completeness: Completeness | None = None


def candidates(attribution: Attribution, node_mask: torch.Tensor, top: int,
               supernodes: dict[str, list[int]] | None = None) -> list[Candidate]:  # fmt: skip
    """Steps 1-2: top-N features of the pruned graph by influence, then the supernodes {label: adjacency rows}."""
    from tracer.prune import logit_weights, node_influence
    from tracer.schema import node_id

    lay = attribution.layout
    infl = node_influence(attribution.adjacency, logit_weights(lay, attribution.logit_probs))
    eff = effects(attribution)
    feat = node_mask & lay.mask(NodeKind.FEATURE)
    rows = feat.nonzero().flatten()
    rows = rows[infl[rows].argsort(descending=True, stable=True)[:top]].tolist()

    def ref(row: int) -> FeatureRef:
        n = lay.node(row)
        return FeatureRef(n.layer, n.index, n.pos)

    out = [Candidate(node_id(lay.node(r)), [ref(r)], float(infl[r]), float(eff.target_influence[r]),
                     float(eff.signed_effect[r])) for r in rows]  # fmt: skip
    for label, members in (supernodes or {}).items():
        members = [m for m in members if bool(lay.mask(NodeKind.FEATURE)[m])]
        if not members:
            continue
        held = torch.zeros(lay.n_nodes, dtype=torch.bool)
        held[members] = True
        t = signed_total_effect(attribution.adjacency, lay, attribution.activations, eff.target_row, held)
        out.append(Candidate(label, [ref(m) for m in members], float(infl[members].sum()),
                             float(eff.target_influence[members].sum()), float(t[members].sum())))  # fmt: skip
    return out


def _target_value(logits: torch.Tensor, token: int, minus: int | None) -> float:
    last = logits[-1].double()
    return float(last[token] - (last[minus] if minus is not None else last.mean()))


def measure(model: Transformer, tc: Transcoder, rec: Record, cands: list[Candidate], mode: Mode, token: int,
            minus: int | None = None) -> None:  # fmt: skip
    """Step 3: fills each candidate's `measured` change of the target."""
    before = _target_value(rec.logits, token, minus)
    for c in cands:
        res = intervene(model, tc, rec.tokens, [Intervention.ablate(*c.features, label=c.label)], mode, rec)
        c.measured = _target_value(res.logits_after, token, minus) - before


def compare(cands: list[Candidate], mode: str, target: str, n_worst: int = 5) -> Validation:
    """Step 4."""
    measured = torch.tensor([c.measured for c in cands], dtype=torch.float64)
    predicted = torch.tensor([c.predicted for c in cands], dtype=torch.float64)
    moved = measured.abs() > 1e-6 * max(float(measured.abs().max()) if len(cands) else 0.0, 1e-12)
    agree = (torch.sign(measured) == torch.sign(predicted))[moved]
    worst: list[str] = []
    if len(cands) > 1:
        gap = (ranks(measured) - ranks(predicted)).abs()
        worst = [cands[i].label for i in gap.argsort(descending=True, stable=True)[:n_worst].tolist()]
    return Validation(
        mode=mode, target=target, candidates=cands, spearman_signed=spearman(predicted, measured),
        spearman_influence=spearman([c.influence for c in cands], measured.abs()),
        spearman_target_influence=spearman([c.target_influence for c in cands], measured.abs()),
        sign_agreement=float(agree.double().mean()) if len(agree) else math.nan, worst=worst,
    )  # fmt: skip


def completeness(model: Transformer, tc: Transcoder, rec: Record, attribution: Attribution, node_mask: torch.Tensor,
                 token: int, minus: int | None = None) -> Completeness:  # fmt: skip
    """Step 5 (always in replacement mode, where error vectors are held)."""
    lay = attribution.layout
    feats = lay.features
    inside = node_mask[lay.feature_rows()]

    def ablated(sel: torch.Tensor) -> float:
        refs = [FeatureRef(int(f[0]), int(f[2]), int(f[1])) for f in feats[sel]]
        ivs = [Intervention.ablate(*refs)] if refs else []
        res = intervene(model, tc, rec.tokens, ivs, Mode.REPLACEMENT, rec)
        return _target_value(res.logits_after, token, minus)

    return Completeness(_target_value(rec.logits, token, minus), ablated(~inside),
                        ablated(torch.ones_like(inside)), int((~inside).sum()))  # fmt: skip


@torch.no_grad()
def validate(model: Transformer, tc: Transcoder, attribution: Attribution, node_mask: torch.Tensor, *,
             top: int = 20, mode: Mode | str = Mode.REPLACEMENT, supernodes: dict[str, list[int]] | None = None,
             minus: int | None = None, check_completeness: bool = True) -> Validation:  # fmt: skip
    """Steps 1-5 for one graph. node_mask: [n_nodes] bool, the pruned graph; supernodes: {label: adjacency rows};
    minus: token id of a --minus graph's second token."""
    mode = Mode(mode)
    rec = record(model, tc, attribution.layout.tokens)
    token = int(attribution.layout.logit_tokens[0])
    cands = candidates(attribution, node_mask, top, supernodes)
    measure(model, tc, rec, cands, mode, token, minus)
    out = compare(cands, mode.value, attribution.logit_strs[0])
    if check_completeness:
        out.completeness = completeness(model, tc, rec, attribution, node_mask, token, minus)
    return out


@dataclass
class PlantedValidation:
    """Summary of `validate` over held-out planted prompts (means over prompts; NaN Spearmans skipped)."""

    n_prompts: int
    spearman_signed: float  # mean Spearman(-signed effect, measured ablation change)
    spearman_influence: float  # mean Spearman(influence, |measured change|)
    spearman_target_influence: float
    sign_agreement: float
    completeness_surviving: float  # mean share of the target logit left with everything outside the graph ablated
    top1_is_answer: float  # share of prompts whose most probable token is the planted answer
    per_task: dict[str, float] = field(default_factory=dict)  # task -> mean Spearman(signed)
    per_prompt: list[dict] = field(default_factory=list)


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def planted_validation(model: Transformer, tc: Transcoder, tokenizer, prompts: list[dict], *, top: int = 20,
                       mode: Mode | str = Mode.REPLACEMENT, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                       progress: bool = False) -> PlantedValidation:  # fmt: skip
    """Trace, prune and validate each prompt ({"task", "prompt", "answer"}, as in
    tracer/assets/planted_heldout.json) and average the results.

    For benchmarks/ground_truth.py: `planted_validation(lm.model, tc, lm.tokenizer, prompts).spearman_signed` is
    the mean Spearman correlation between the graph's signed total effect and the measured ablation effect (goal
    >= 0.8; the Circuit Tracing paper reports 0.72 for influence); `.spearman_influence` the same for influence.
    `tracer.validate_planted` (python -m tracer.validate_planted) is the command that prints it.
    """
    from tqdm.auto import tqdm

    from tracer.attribute import TraceConfig, attribute
    from tracer.prune import prune

    rows: list[dict] = []
    for p in tqdm(prompts, desc="validate", unit="prompt", disable=not progress):
        ids = tokenizer.encode_prompt(p["prompt"], model.cfg.n_ctx, model.cfg.bos_token_id)
        with torch.inference_mode(False):
            attr = attribute(model, tc, torch.tensor(ids), tokenizer, TraceConfig())
        pr = prune(attr, node_threshold=node_threshold, edge_threshold=edge_threshold)
        v = validate(model, tc, attr, pr.node_mask, top=top, mode=mode)
        assert v.completeness is not None
        rows.append({"task": p.get("task", ""), "prompt": p["prompt"], "answer": p.get("answer"),
                     "top1": attr.logit_strs[0], "spearman_signed": v.spearman_signed,
                     "spearman_influence": v.spearman_influence,
                     "spearman_target_influence": v.spearman_target_influence, "sign_agreement": v.sign_agreement,
                     "completeness_surviving": v.completeness.surviving})  # fmt: skip
    tasks = sorted({r["task"] for r in rows})
    return PlantedValidation(
        n_prompts=len(rows), spearman_signed=_mean([r["spearman_signed"] for r in rows]),
        spearman_influence=_mean([r["spearman_influence"] for r in rows]),
        spearman_target_influence=_mean([r["spearman_target_influence"] for r in rows]),
        sign_agreement=_mean([r["sign_agreement"] for r in rows]),
        completeness_surviving=_mean([r["completeness_surviving"] for r in rows]),
        top1_is_answer=_mean([float(r["top1"] == r["answer"]) for r in rows]),
        per_task={t: _mean([r["spearman_signed"] for r in rows if r["task"] == t]) for t in tasks}, per_prompt=rows,
    )  # fmt: skip
