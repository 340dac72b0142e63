"""`tracer intervene` and `tracer generate`: feature interventions and steered generation from the command line.

intervene: 1. parse the feature specs (before anything is loaded); 2. load model and transcoders (and the graph
           whose supernodes are named, checking that it was traced with these transcoders); 3. tokenize; 4. run
           tracer.interventions.intervene in the chosen mode; 5. print the top logits before -> after and the
           change of one token (--json: one JSON object).
generate:  1.-3. as above; 4. greedy or seeded sampled decoding, once plain and once steered (tracer.steering);
           5. print both continuations.

Feature specs: `L/IDX` (every position after BOS), `L/IDX@POS`, a graph node id `F{L}.{IDX}@{POS}`, or
`sn:LABEL` (every feature of a supernode of --graph); `--scale` and `--set` add `=NUMBER`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import TracerError
from tracer.precision import add_precision_args

MODES = ("constrained", "replacement", "free")
_FEATURE = re.compile(r"^(\d+)/(\d+)(?:@(\d+))?$")
_NODE = re.compile(r"^F(\d+)\.(\d+)@(\d+)$")


class SpecError(TracerError):
    """A feature spec or value on the command line cannot be parsed."""


@dataclass(frozen=True)
class Spec:
    """One parsed command-line intervention: action, features (layer, index, pos | None) or a supernode label."""

    action: str  # ablate | scale | set
    text: str  # as given, for messages
    features: tuple[tuple[int, int, int | None], ...]
    supernode: str | None
    value: float


def parse_spec(action: str, text: str) -> Spec:
    """`L/IDX[@POS][=X]`, `F{L}.{IDX}@{POS}[=X]` or `sn:LABEL[=X]` -> Spec (SpecError on bad syntax or value)."""
    body, value = text, 0.0
    if action != "ablate":
        if "=" not in text:
            raise SpecError(f"--{action} {text!r} needs a value: {text}=NUMBER")
        body, raw = text.rsplit("=", 1)
        try:
            value = float(raw)
        except ValueError:
            raise SpecError(f"the value {raw!r} of --{action} {text!r} is not a number") from None
        if not math.isfinite(value):
            raise SpecError(f"the value {raw!r} of --{action} {text!r} is not a finite number")
    if body.startswith("sn:"):
        if not body[3:].strip():
            raise SpecError(f"--{action} {text!r}: empty supernode label")
        return Spec(action, text, (), body[3:], value)
    m = _FEATURE.match(body) or _NODE.match(body)
    if m is None:
        raise SpecError(f"--{action} {text!r}: expected LAYER/INDEX[@POS], a node id F<L>.<IDX>@<POS> or sn:LABEL")
    layer, idx, pos = m.groups()
    return Spec(action, text, ((int(layer), int(idx), None if pos is None else int(pos)),), None, value)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ablate", action="append", default=[], metavar="L/IDX[@POS]",
                   help="set a feature (or sn:LABEL supernode) to 0; no @POS: every position after BOS")  # fmt: skip
    p.add_argument("--scale", action="append", default=[], metavar="L/IDX[@POS]=X", help="multiply by X")
    p.add_argument("--set", action="append", default=[], metavar="L/IDX[@POS]=V", help="set the activation to V")
    p.add_argument("--mode", choices=MODES, default="replacement",
                   help="constrained: all but the intervened features frozen (direct effects only); "
                        "replacement: patterns, norms, errors frozen, features re-encoded; free: real model",
                   )  # fmt: skip
    p.add_argument("--graph", type=Path, help="graph file whose supernodes sn:LABEL name (default prompt: its own)")
    p.add_argument("--model", type=Path, help="HF-layout model directory or .gguf file (default: bundled model)")
    p.add_argument("--transcoders", type=Path, help="transcoder directory (default: bundled CLT)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    add_precision_args(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("intervene", help="ablate, scale or set features and compare the logits before and after")
    p.add_argument("prompt", nargs="?", help="text (a BOS token is prepended; default: the --graph's prompt)")
    _common(p)
    p.add_argument("--token", help="token whose change to report, e.g. ' cold' (default: the top token before)")
    p.add_argument("--top", type=int, default=5, help="top logits to show before and after")
    p.set_defaults(func=run_intervene)

    g = sub.add_parser("generate", help="generate text with features steered at every position")
    g.add_argument("prompt", nargs="?", help="text (a BOS token is prepended; default: the --graph's prompt)")
    g.add_argument("--steer", action="append", default=[], metavar="L/IDX[@POS]=X",
                   help="scale a feature by X at every position after BOS (same as --scale)")  # fmt: skip
    _common(g)
    g.add_argument("--tokens", type=int, default=10, help="new tokens to generate")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0: sample at this temperature")
    g.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    g.set_defaults(func=run_generate)


def _specs(args: argparse.Namespace) -> list[Spec]:
    specs = [parse_spec(a, t) for a in ("ablate", "scale", "set") for t in getattr(args, a)]
    specs += [parse_spec("scale", t) for t in getattr(args, "steer", [])]
    if not specs:
        raise SpecError("no intervention given: use --ablate, --scale or --set (generate: also --steer)")
    if any(s.supernode is not None for s in specs) and args.graph is None:
        raise SpecError("sn:LABEL names a supernode of a graph file: pass --graph GRAPH")
    return specs


@dataclass
class Loaded:
    model: object
    tc: object
    tokenizer: object
    tokens: list[int]
    prompt: str
    interventions: list


def _load(args: argparse.Namespace) -> Loaded:
    """Steps 1-3 of both commands; every input error is raised before the model runs."""
    import torch

    from tracer.graphfile import load_graph
    from tracer.hub import resolve_transcoders
    from tracer.interventions import Action, FeatureRef, Intervention, check_interventions
    from tracer.models import load_model
    from tracer.models.loading import file_hash
    from tracer.precision import resolve_precision
    from transcoders import DEFAULT_TRANSCODERS, load_transcoders

    specs = _specs(args)
    graph = load_graph(args.graph) if args.graph is not None else None
    prompt = args.prompt if args.prompt is not None else (graph.metadata.prompt if graph else None)
    if prompt is None:
        raise SpecError("give a prompt (or --graph GRAPH to use its prompt)")
    if args.threads:
        torch.set_num_threads(args.threads)
    prec = resolve_precision(args)
    lm = load_model(args.model, dtype=prec.dtype)
    lm.model.to(prec.device)
    tc_dir = resolve_transcoders(args.transcoders) or DEFAULT_TRANSCODERS
    tc = load_transcoders(tc_dir, lm.cfg, dtype=lm.model.embed.weight.dtype).to(prec.device)
    if lm.tokenizer is None:
        raise SpecError("the model has no tokenizer")
    tokens = lm.tokenizer.encode_prompt(prompt, lm.cfg.n_ctx, lm.cfg.bos_token_id)
    tc_hash = file_hash(sorted(tc_dir.glob("*.safetensors")))
    ivs = []
    for s in specs:
        feats = s.features
        if s.supernode is not None:
            assert graph is not None
            feats = _supernode(graph, s.supernode, tc_hash, tc_dir.name)
            if graph.metadata.token_ids != tokens:
                raise SpecError(f"supernode {s.supernode!r} is from the graph of {graph.metadata.prompt!r}, "
                                f"not of this prompt")  # fmt: skip
        refs = tuple(FeatureRef(*f) for f in feats)
        ivs.append(Intervention(refs, Action(s.action), s.value, s.supernode or s.text))
    check_interventions(ivs, tc, len(tokens))
    return Loaded(lm.model, tc, lm.tokenizer, tokens, prompt, ivs)


def _supernode(graph, label: str, tc_hash: str, tc_name: str) -> tuple[tuple[int, int, int], ...]:
    """Members of supernode `label` as (layer, index, pos); the graph must come from these transcoders."""
    if graph.metadata.transcoders.content_hash != tc_hash:
        t = graph.metadata.transcoders
        raise SpecError(f"supernode {label!r} has features of transcoder set {t.name} ({t.content_hash}), "
                        f"not of the loaded {tc_name} ({tc_hash})")  # fmt: skip
    found = [sn for sn in graph.view.supernodes if sn.label == label]
    if not found:
        names = ", ".join(repr(sn.label) for sn in graph.view.supernodes) or "none"
        raise SpecError(f"no supernode {label!r} in the graph (it has: {names})")
    feats = []
    for member in found[0].members:
        m = _NODE.match(member)
        if m is None:
            raise SpecError(f"supernode {label!r} member {member} is not a feature; only features can be changed")
        feats.append((int(m[1]), int(m[2]), int(m[3])))
    return tuple(feats)


def run_intervene(args: argparse.Namespace) -> int:
    from tracer.interventions import Mode, intervene

    if args.top < 1:
        raise SpecError("--top must be >= 1")
    ld = _load(args)
    tok = ld.tokenizer
    token = None
    if args.token is not None:
        ids = tok.encode(args.token)  # type: ignore[attr-defined]
        if len(ids) != 1:
            raise SpecError(f"--token {args.token!r} is {len(ids)} tokens, not one")
        token = ids[0]
    import torch

    res = intervene(ld.model, ld.tc, torch.tensor(ld.tokens), ld.interventions, Mode(args.mode))  # type: ignore[arg-type]
    token = token if token is not None else res.top(1, after=False)[0][0]
    name = tok.token_str  # type: ignore[attr-defined]
    p_before = res.logits_before[-1].double().softmax(-1)
    p_after = res.logits_after[-1].double().softmax(-1)
    out = {
        "prompt": ld.prompt, "mode": args.mode,
        "interventions": [f"{iv.action.value} {iv.label}" for iv in ld.interventions],
        "top_before": [{"token": name(i), "probability": round(p, 6)} for i, p in res.top(args.top, after=False)],
        "top_after": [{"token": name(i), "probability": round(p, 6)} for i, p in res.top(args.top)],
        "token": {"token": name(token), "logit_before": float(res.logits_before[-1, token]),
                  "logit_after": float(res.logits_after[-1, token]), "probability_before": float(p_before[token]),
                  "probability_after": float(p_after[token]), "demeaned_logit_change": res.logit_change(token)},
    }  # fmt: skip
    print(json.dumps(out) if args.json else _format_intervene(out))
    return 0


def _format_intervene(o: dict) -> str:
    t = o["token"]
    lines = [f"prompt: {o['prompt']!r} (mode: {o['mode']})", "interventions: " + "; ".join(o["interventions"])]
    lines.append(f"{'before':<28}after")
    for b, a in zip(o["top_before"], o["top_after"], strict=True):
        lines.append(f"  {b['token']!r:<16} {b['probability']:.3f}    {a['token']!r:<16} {a['probability']:.3f}")
    lines.append(f"{t['token']!r}: logit {t['logit_before']:.3f} -> {t['logit_after']:.3f}, probability "
                 f"{t['probability_before']:.3f} -> {t['probability_after']:.3f}")  # fmt: skip
    return "\n".join(lines)


def run_generate(args: argparse.Namespace) -> int:
    from tracer.interventions import Mode
    from tracer.steering import GenerateConfig, generate

    cfg = GenerateConfig(n_tokens=args.tokens, temperature=args.temperature, seed=args.seed, mode=Mode(args.mode))
    ld = _load(args)
    plain = generate(ld.model, ld.tc, ld.tokens, [], cfg)  # type: ignore[arg-type]
    steered = generate(ld.model, ld.tc, ld.tokens, ld.interventions, cfg)  # type: ignore[arg-type]
    dec = ld.tokenizer.decode  # type: ignore[attr-defined]
    out = {"prompt": ld.prompt, "mode": args.mode, "interventions": [f"{iv.action.value} {iv.label}"
           for iv in ld.interventions], "plain": dec(plain), "steered": dec(steered)}  # fmt: skip
    if args.json:
        print(json.dumps(out))
    else:
        print(f"prompt: {ld.prompt!r} (mode: {args.mode}); " + "; ".join(out["interventions"]))
        print(f"plain:   {ld.prompt}{out['plain']}")
        print(f"steered: {ld.prompt}{out['steered']}")
    return 0
