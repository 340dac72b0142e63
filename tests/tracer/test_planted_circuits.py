"""Hand-built planted circuits: a 2-layer model and a transcoder set whose weights are set by hand, so the circuit is
known exactly, no training involved.

Prompt [BOS, A, X, Q] (residual basis e0..e11; tokens are c·e_token with c = √D, so every embedding has RMS 1):
- layer 0: feature fA reads token A (e1) and writes e8; distractor fD reads token X (e2) and writes e11, which
  nothing reads.
- layer 1, head 0: the query of token Q (e3) matches the key of token A (e1), so position 3 attends to position 1
  and the head copies e8 there into e9 (gain γ); head 1 and layer 0's attention are zero.
- layer 1: feature fB reads e9 and writes e10, the answer token B's unembedding; distractor fE reads token Q and
  writes 5 % as much e10.
- the MLPs are the transcoders themselves (up = W_enc, bias = b_enc, down = W_dec; every pre-activation is either
  >= 12 or <= -20, where tanh-GELU is exactly ReLU in float64), so every error node is zero.
Expected edges are computed from these numbers alone (RMS scales, softmax of one score), not from the runtime.
"""

from __future__ import annotations

import math

import pytest
import torch

from tracer.attribute import TraceConfig, attribute
from tracer.layout import NodeKind
from tracer.models import MlpKind, ModelConfig, NormKind, PosKind, Transformer
from tracer.prune import prune
from transcoders import ActivationKind, Transcoder, TranscoderConfig, TranscoderKind

D, V, F, DH = 12, 8, 3, 6
A, X, Q, B = 1, 2, 3, 4  # tokens; B is the answer
TOKENS = torch.tensor([0, A, X, Q])
C = math.sqrt(D)  # embedding scale: RMS 1
EPS = 1e-5
ALPHA, GAMMA, M, U = 3.0, 3.0, 15.0, 1.0  # query/key gain, OV gain, fB's encoder gain, unembedding gain
READ, B0, B1, BE = 32.0, 20.0, 34.0, 24.0  # token-detector gain; biases of fA/fD, fB, fE
FE_OUT = 0.05  # fE's write to the answer direction, relative to fB's
FA, FD, FB, FE = (0, 0), (0, 1), (1, 0), (1, 1)  # (layer, feature index)


def e(i: int) -> torch.Tensor:
    v = torch.zeros(D, dtype=torch.float64)
    v[i] = 1.0
    return v


def build(kind: TranscoderKind) -> tuple[Transformer, Transcoder]:
    cfg = ModelConfig(family="llama", n_layers=2, d_model=D, n_heads=2, d_mlp=F, vocab_size=V, n_ctx=8,
                      norm=NormKind.RMSNORM, mlp=MlpKind.GELU, pos=PosKind.LEARNED, mlp_bias=True,
                      tied_embeddings=False, norm_eps=EPS, bos_token_id=0)  # fmt: skip
    model = Transformer(cfg).double()
    tcfg = TranscoderConfig(kind=kind, n_layers=2, d_model=D, n_features=F, activation=ActivationKind.JUMPRELU)
    tc = Transcoder(tcfg).double()
    with torch.no_grad():
        for p in [*model.parameters(), *tc.parameters()]:
            p.zero_()
        blocks = [model.block(layer) for layer in range(2)]
        for blk in blocks:
            for norm in (blk.ln1, blk.ln2):
                norm.weight.fill_(1.0)
        model.ln_f.weight.fill_(1.0)
        model.embed.weight.copy_(C * torch.eye(V, D, dtype=torch.float64))
        model.unembed.weight[B] = U * e(10)
        assert tc.theta is not None
        tc.theta.fill_(1.0)
        tc.b_enc.fill_(-B0)
        tc.W_enc[FA], tc.W_enc[FD] = READ * e(A), READ * e(X)
        tc.W_enc[FB], tc.b_enc[FB] = M * e(9), -B1
        tc.W_enc[FE], tc.b_enc[FE] = READ * e(Q), -BE
        tc.decoder(0)[FA[1], 0], tc.decoder(0)[FD[1], 0] = e(8), e(11)
        tc.decoder(1)[FB[1], 0], tc.decoder(1)[FE[1], 0] = e(10), FE_OUT * e(10)
        attn = blocks[1].attn
        attn.q.weight[0], attn.k.weight[0], attn.v.weight[0] = ALPHA * e(Q), ALPHA * e(A), e(8)
        attn.o.weight[9, 0] = GAMMA
        for layer, blk in enumerate(blocks):  # the MLPs are the transcoders
            blk.mlp.up.weight.copy_(tc.W_enc[layer])
            blk.mlp.up.bias.copy_(tc.b_enc[layer])
            blk.mlp.down.weight.copy_(tc.decoder(layer)[:, 0].T)
    return model.requires_grad_(False).eval(), tc.requires_grad_(False)


def rms(*parts: float) -> float:
    """RMSNorm denominator of a residual whose orthogonal components are `parts`."""
    return math.sqrt(sum(p * p for p in parts) / D + EPS)


def expected_edges() -> dict[tuple[str, str], float]:
    """The circuit's edges (source, target) -> weight, from the construction alone."""
    a_A = READ * C / rms(C) - B0  # fA at position 1 (layer-0 MLP input = the embedding)
    r1 = rms(C, a_A)  # layer-1 input at position 1: embedding + fA's e8
    score = ALPHA * (C / rms(C)) * ALPHA * (C / r1) / math.sqrt(DH)
    p31 = math.exp(score) / (math.exp(score) + 3)  # the other keys score 0
    h3 = GAMMA * p31 * a_A / r1  # e9 written at position 3
    r2 = rms(C, h3)  # layer-1 MLP input at position 3
    a_B = M * h3 / r2 - B1
    a_E = READ * C / r2 - BE
    rf = rms(C, h3, a_B + FE_OUT * a_E)  # final residual at position 3
    logit = (1 - 1 / V) * U / rf  # demeaned unembedding of B, read after the final norm
    return {("emb1", "fA"): READ * C / rms(C), ("emb2", "fD"): READ * C / rms(C),
            ("emb3", "fE"): READ * C / r2, ("fA", "fB"): a_A * p31 * GAMMA * M / (r1 * r2),
            ("fB", "logit"): a_B * logit, ("fE", "logit"): a_E * FE_OUT * logit}  # fmt: skip


def names(attr) -> dict[int, str]:
    """Adjacency row -> the construction's name of that node (features, embeddings, the logit)."""
    lay = attr.layout
    out = {int(lay.embedding_rows(p)): f"emb{p}" for p in range(len(TOKENS))}
    out[int(lay.logit_rows(0))] = "logit"
    where = {(1, *FA): "fA", (2, *FD): "fD", (3, *FB): "fB", (3, *FE): "fE"}
    for i, (layer, pos, f) in enumerate(lay.features.tolist()):
        out[int(lay.feature_rows(torch.tensor(i)))] = where.get((pos, layer, f), f"other{layer}/{pos}/{f}")
    return out


@pytest.fixture(params=[TranscoderKind.CLT, TranscoderKind.PLT], ids=["clt", "plt"])
def traced(request):
    model, tc = build(request.param)
    return attribute(model, tc, TOKENS, None, TraceConfig(max_n_logits=1))


def test_only_the_planted_features_fire_and_errors_vanish(traced):
    assert sorted(names(traced).values()) == sorted(["emb0", "emb1", "emb2", "emb3", "logit", "fA", "fD", "fB", "fE"])
    assert int(traced.layout.logit_tokens[0]) == B
    assert float(traced.error_norms.abs().max()) < 1e-9


def test_graph_is_exactly_the_planted_circuit(traced):
    """Every non-zero edge among features, embeddings and the logit is one of the construction's, with its value."""
    name = names(traced)
    A_ = traced.adjacency.to_dense()
    got = {(name[s], name[t]): float(A_[t, s]) for t, s in A_.nonzero().tolist() if abs(A_[t, s]) > 1e-9}
    want = expected_edges()
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k


def test_pruning_keeps_the_path_and_drops_the_distractors(traced):
    res = prune(traced, node_threshold=0.8, edge_threshold=0.98)
    name = names(traced)
    kept = {name[r] for r in res.node_mask.nonzero().flatten().tolist() if r in name}
    assert {"fA", "fB", "emb1", "logit"} <= kept
    assert not {"fD", "fE"} & kept
    adj = res.adjacency.coalesce()
    edges = {(name[int(s)], name[int(t)]) for t, s in adj.indices().T if int(s) in name and int(t) in name}
    assert {("emb1", "fA"), ("fA", "fB"), ("fB", "logit")} <= edges
    lay = traced.layout
    assert not res.node_mask[lay.rows(NodeKind.ERROR)].any()
