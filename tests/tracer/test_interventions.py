"""Interventions against independent references (fp64 tiny models, GPT-2 and Llama styles, CLT and PLT).

- constrained: ablating a feature moves every other feature's pre-activation and every demeaned logit by exactly
  minus the graph's edge from it (the graph comes from tracer.backward, the intervention from frozen_forward);
- replacement: equals a hand-written layer-by-layer recomputation (no hooks: embeddings, frozen patterns/norms,
  encode, edit, decode + skip + recorded error, per layer);
- free: equals the real model with its MLP outputs patched by hand with Δa·W_dec;
- steering at scale 1 leaves greedy generation unchanged; setting a feature to 25 changes it exactly as the
  hand-written model of each mode does.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_model, tiny_config
from tests.tracer.test_attribution import CFG, TOKENS, random_transcoder
from tracer.attribute import attribute
from tracer.interventions import FeatureRef, Intervention, InterventionError, Mode, intervene, steered_logits
from tracer.layout import NodeKind
from tracer.models import HookPoint, Site
from tracer.record import record
from tracer.steering import GenerateConfig, generate
from transcoders import TranscoderKind

CASES = [
    ("gpt2", TranscoderKind.CLT, HookPoint.MLP_IN, False),
    ("llama", TranscoderKind.CLT, HookPoint.MLP_IN, True),
    ("gpt2", TranscoderKind.PLT, HookPoint.RESID_MID, True),
    ("llama", TranscoderKind.PLT, HookPoint.MLP_IN, False),
]


def setup(style, kind, hook, skip):
    model = random_model(tiny_config(style))
    return model, random_transcoder(model, kind, hook, skip)


@pytest.mark.parametrize(("style", "kind", "hook", "skip"), CASES)
def test_constrained_ablation_reproduces_graph_edges(style, kind, hook, skip):
    model, tc = setup(style, kind, hook, skip)
    attr = attribute(model, tc, TOKENS, None, CFG)
    lay, A = attr.layout, attr.adjacency.to_dense()
    rec = record(model, tc, TOKENS)
    f = lay.features
    moved = 0
    for i in range(0, len(f), 3):  # every third feature as the source
        layer, pos, idx = f[i].tolist()
        res = intervene(model, tc, TOKENS, [Intervention.ablate(FeatureRef(layer, idx, pos))], Mode.CONSTRAINED, rec)
        got = torch.zeros(lay.n_nodes, dtype=torch.float64)
        d_pre = res.pre_after - res.pre_before
        got[lay.feature_rows()] = d_pre[f[:, 1], f[:, 0], f[:, 2]]
        got[lay.logit_rows()] = torch.tensor([res.logit_change(int(t)) for t in lay.logit_tokens], dtype=torch.float64)
        rows = lay.mask(NodeKind.FEATURE) | lay.mask(NodeKind.LOGIT)
        col = int(lay.feature_rows(torch.tensor(i)))
        torch.testing.assert_close(got[rows], -A[rows, col], atol=1e-8, rtol=0)
        changed = (res.acts_after != res.acts_before).nonzero().tolist()
        assert changed == [[pos, layer, idx]]  # every other feature stays frozen
        moved += int((A[rows, col] != 0).sum())
    assert moved > 20  # not vacuous


def manual_replacement(model, tc, rec, edits):
    """Local replacement model written out layer by layer; edits: {(layer): fn(acts [P, F]) -> acts}."""
    P = rec.n_pos
    x = model.embed(rec.tokens)
    if model.pos_embed is not None:
        x = x + model.pos_embed.weight[:P]
    acts = []
    for layer in range(model.cfg.n_layers):
        blk = model.block(layer)
        xn = blk.ln1.normalize(x, rec.ln1_scale[layer])
        x = x + blk.attn.mix(rec.patterns[layer][None], xn[None])[0]
        tc_in = blk.ln2.normalize(x, rec.ln2_scale[layer]) if tc.cfg.input_hook == HookPoint.MLP_IN else x
        a = tc.encode_layer(tc_in, layer)
        a[0] = 0  # BOS features live in the recorded error
        acts.append(edits.get(layer, lambda t: t)(a.clone()))
        out = tc.decode_layer(acts, layer) + rec.errors[:, layer]
        if tc.W_skip is not None:
            out = out + tc_in @ tc.W_skip[layer].T
        x = x + out
    logits = model.unembed(model.ln_f.normalize(x, rec.lnf_scale))
    return logits, torch.stack(acts, 1)


def strongest_feature(rec, layer):
    """(pos, feature) of the largest activation at `layer`."""
    a = rec.acts[:, layer]
    p, f = divmod(int(a.argmax()), a.shape[1])
    return p, f


@pytest.mark.parametrize(("style", "kind", "hook", "skip"), CASES)
def test_replacement_equals_layer_by_layer_recomputation(style, kind, hook, skip):
    model, tc = setup(style, kind, hook, skip)
    rec = record(model, tc, TOKENS)
    p0, f0 = strongest_feature(rec, 0)
    p1, f1 = strongest_feature(rec, 1)
    ivs = [Intervention.ablate(FeatureRef(0, f0, p0)), Intervention.scale(3.0, FeatureRef(1, f1)),
           Intervention.set(2.5, FeatureRef(1, 0, 4))]  # fmt: skip

    def edit0(a):
        a[p0, f0] = 0
        return a

    def edit1(a):
        a[1:, f1] *= 3.0
        a[4, 0] = 2.5
        return a

    want_logits, want_acts = manual_replacement(model, tc, rec, {0: edit0, 1: edit1})
    res = intervene(model, tc, TOKENS, ivs, Mode.REPLACEMENT, rec)
    torch.testing.assert_close(res.logits_after, want_logits, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.acts_after, want_acts, atol=1e-10, rtol=0)
    # downstream features responded (layer 2 is not edited), unlike in constrained mode
    assert (res.acts_after[:, 2] - res.acts_before[:, 2]).abs().max() > 1e-3
    none = intervene(model, tc, TOKENS, [], Mode.REPLACEMENT, rec)
    torch.testing.assert_close(none.logits_after, rec.logits, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("style", "kind", "hook", "skip"), CASES)
def test_free_equals_manual_mlp_patch(style, kind, hook, skip):
    model, tc = setup(style, kind, hook, skip)
    rec = record(model, tc, TOKENS)
    layer = 1
    p, f = strongest_feature(rec, layer)
    g = 1 if f != 1 else 2
    ivs = [Intervention.ablate(FeatureRef(layer, f, p)), Intervention.set(4.0, FeatureRef(layer, g))]
    # Δa at the source layer: its input is the clean one (nothing upstream changed)
    a = tc.encode_layer(rec.tc_input[:, layer], layer)
    delta = torch.zeros_like(a)
    delta[p, f] = -a[p, f]
    delta[1:, g] = 4.0 - a[1:, g]
    if g == f:
        raise AssertionError("features must differ")
    W = tc.decoder(layer)  # [F, n_out, D]

    def patch(out_layer):
        return lambda out: out + (delta @ W[:, out_layer - layer])[None]

    n_out = tc.cfg.n_out(layer)
    hooks = {Site(HookPoint.MLP_OUT, layer + k): patch(layer + k) for k in range(n_out)}
    with model.hooks.attached(hooks):
        want = model(TOKENS[None])[0]
    res = intervene(model, tc, TOKENS, ivs, Mode.FREE, rec)
    torch.testing.assert_close(res.logits_after, want, atol=1e-10, rtol=0)
    torch.testing.assert_close(steered_logits(model, tc, TOKENS, ivs, Mode.FREE), want[-1], atol=1e-10, rtol=0)
    assert (res.logits_after - rec.logits).abs().max() > 1e-3
    same = intervene(model, tc, TOKENS, [Intervention.scale(1.0, FeatureRef(layer, f))], Mode.FREE, rec)
    torch.testing.assert_close(same.logits_after, rec.logits, atol=1e-12, rtol=0)


def _add(v):
    return lambda out: out + v[None]


def reference_steered(model, tc, f, value, mode, n):
    """Greedy decoding with feature (1, f) set to `value` at every position after BOS, each step by hand on a fresh
    record: replacement: manual_replacement; constrained: the same with every other feature frozen at its recorded
    activation; free: the real model with its MLP outputs patched by Δa·W_dec (layer 1's input is the clean one).
    Returns the new tokens and the first step's last-position logits."""
    seq, first = TOKENS.tolist(), None
    for _ in range(n):
        rec = record(model, tc, torch.tensor(seq))
        if mode is Mode.FREE:
            a = tc.encode_layer(rec.tc_input[:, 1], 1)
            delta = torch.zeros_like(a)
            delta[1:, f] = value - a[1:, f]
            W = tc.decoder(1)
            hooks = {Site(HookPoint.MLP_OUT, 1 + k): _add(delta @ W[:, k]) for k in range(tc.cfg.n_out(1))}
            with model.hooks.attached(hooks):
                logits = model(torch.tensor(seq)[None])[0]
        else:

            def edit(layer, rec=rec):
                def fn(a):
                    a = rec.acts[:, layer].clone() if mode is Mode.CONSTRAINED else a
                    if layer == 1:
                        a[1:, f] = value
                    return a

                return fn

            logits = manual_replacement(model, tc, rec, {i: edit(i) for i in range(3)})[0]
        first = logits[-1] if first is None else first
        seq.append(int(logits[-1].argmax()))
        if seq[-1] == model.cfg.eos_token_id:
            break
    return seq[len(TOKENS) :], first


@pytest.mark.parametrize("mode", list(Mode))
def test_steering_at_scale_one_leaves_generation_unchanged(mode):
    model, tc = setup("llama", TranscoderKind.CLT, HookPoint.MLP_IN, True)
    rec = record(model, tc, TOKENS)
    p, f = strongest_feature(rec, 1)
    plain = model.generate(TOKENS.tolist(), 6)[len(TOKENS) :]
    cfg = GenerateConfig(n_tokens=6, mode=mode, stop_at_eos=True)
    assert generate(model, tc, TOKENS.tolist(), [Intervention.scale(1.0, FeatureRef(1, f))], cfg) == plain
    # a large value changes the continuation, as the hand-written model of each mode says
    steered = generate(model, tc, TOKENS.tolist(), [Intervention.set(25.0, FeatureRef(1, f))], cfg)
    want, want_first = reference_steered(model, tc, f, 25.0, mode, 6)
    assert steered == want and steered[0] != plain[0]
    first = steered_logits(model, tc, TOKENS, [Intervention.set(25.0, FeatureRef(1, f))], mode)
    torch.testing.assert_close(first, want_first, atol=1e-10, rtol=0)
    sampled = GenerateConfig(n_tokens=6, temperature=1.0, seed=3, mode=mode)
    ivs = [Intervention.scale(1.0, FeatureRef(1, f))]
    assert generate(model, tc, TOKENS.tolist(), ivs, sampled) == generate(model, tc, TOKENS.tolist(), ivs, sampled)


def test_bad_interventions_are_one_line_errors():
    model, tc = setup("gpt2", TranscoderKind.CLT, HookPoint.MLP_IN, False)
    with pytest.raises(InterventionError, match="unknown feature"):
        intervene(model, tc, TOKENS, [Intervention.ablate(FeatureRef(3, 0))])
    with pytest.raises(InterventionError, match="unknown feature"):
        intervene(model, tc, TOKENS, [Intervention.ablate(FeatureRef(0, 6))])
    with pytest.raises(InterventionError, match="past the prompt"):
        intervene(model, tc, TOKENS, [Intervention.ablate(FeatureRef(0, 1, len(TOKENS)))])
    with pytest.raises(InterventionError, match="finite number"):
        Intervention.scale(float("nan"), FeatureRef(0, 1))
    with pytest.raises(InterventionError, match="at least one"):
        Intervention.ablate()
