import math

import torch
import torch.nn.functional as F

from tests.conftest import random_model, tiny_config
from tests.transcoders.conftest import random_transcoder
from tracer.models import HookPoint
from tracer.models.transformer import Block
from transcoders import ActivationKind, TranscoderKind
from transcoders.metrics import CLEAR_MARGIN, _Acc, evaluate, plot, splice, table


def test_accumulator_hand_case():
    acc = _Acc(1, 3)
    y = torch.tensor([[[1.0, 0.0]], [[3.0, 2.0]]])  # mean (2, 1); Σ‖y-ȳ‖² = 2 + 2 = 4
    y_hat = torch.tensor([[[1.0, 1.0]], [[2.0, 2.0]]])  # Σ‖y-ŷ‖² = 1 + 1 = 2
    acts = torch.tensor([[[0.5, 0.0, 1.0]], [[0.2, 0.0, 0.0]]])
    acc.add(y[:1], y_hat[:1], acts[:1])
    acc.add(y[1:], y_hat[1:], acts[1:])
    (s,) = acc.layers()
    assert math.isclose(s.nmse, 0.5) and math.isclose(s.l0, 1.5)
    assert math.isclose(s.dead_pct, 100 / 3) and math.isclose(s.dense_pct, 200 / 3)


def _manual_spliced_logits(model, tc, tokens, zero=False):
    """Independent reference: the forward pass written out, each MLP replaced (positions ≥ 1), CLT sums."""
    x = model.embed(tokens)
    rope = model.rope(tokens.shape[1], x.dtype)
    acts = []
    for layer, blk in enumerate(model.blocks):
        xn = blk.ln1.normalize(x, blk.ln1.scale(x))
        x = x + blk.attn.mix(blk.attn.pattern(xn, rope), xn)
        mlp_in = blk.ln2.normalize(x, blk.ln2.scale(x))
        pre = mlp_in @ tc.W_enc[layer].T + tc.b_enc[layer]
        acts.append(pre * (pre > tc.theta[layer]))
        out = tc.b_dec[layer] + mlp_in @ tc.W_skip[layer].T
        for s in range(layer + 1):
            out = out + acts[s] @ tc.decoder(s)[:, layer - s]
        out = torch.zeros_like(out) if zero else out
        real = blk.mlp(mlp_in)
        x = x + torch.cat([real[:, :1], out[:, 1:]], 1)
    return model.unembed(model.ln_f.normalize(x, model.ln_f.scale(x)))


def test_splice_matches_manual_forward():
    model = random_model(tiny_config("llama"))
    tc = random_transcoder(TranscoderKind.CLT, ActivationKind.JUMPRELU, skip=True).double()
    tokens = torch.randint(3, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 1
    ref = _manual_spliced_logits(model, tc, tokens)
    clean = model(tokens)
    zeroed = _manual_spliced_logits(model, tc, tokens, zero=True)
    s = splice(model, tc, tokens, batch_seqs=2)
    lc, lr = clean[:, 1:-1].log_softmax(-1), ref[:, 1:-1].log_softmax(-1)
    tgt = tokens[:, 2:]
    ce = lambda lg: F.cross_entropy(lg[:, 1:-1].flatten(0, 1), tgt.flatten()).item()
    assert s.tokens == tgt.numel()
    assert math.isclose(s.ce_clean, ce(clean), rel_tol=1e-9)
    assert math.isclose(s.ce_replaced, ce(ref), rel_tol=1e-9)
    assert math.isclose(s.kl, (lc.exp() * (lc - lr)).sum(-1).mean().item(), rel_tol=1e-9)
    assert math.isclose(s.top1_agreement, (lc.argmax(-1) == lr.argmax(-1)).double().mean().item())
    p = lc.exp().sort(-1, descending=True).values
    clear = p[..., 0] - p[..., 1] >= CLEAR_MARGIN
    assert 0 < clear.sum() < clear.numel()  # both kinds of position occur, so the restriction is tested
    assert math.isclose(s.clear_share, clear.double().mean().item())
    assert math.isclose(s.top1_agreement_clear, (lc.argmax(-1) == lr.argmax(-1))[clear].double().mean().item())
    z = s.ce_zero_ablated
    assert math.isclose(s.ce_recovered, (z - s.ce_replaced) / (z - s.ce_clean))
    assert math.isclose(z, ce(zeroed), rel_tol=1e-9)


def test_perfect_transcoder_recovers_everything():
    """MLPs with zero weights output exactly their bias: a transcoder with b_dec = bias is perfect."""
    model = random_model(tiny_config("gpt2"))
    tc = random_transcoder(TranscoderKind.PLT, ActivationKind.RELU, skip=False, d_model=16).double()
    with torch.no_grad():
        for layer, blk in enumerate(model.blocks):
            assert isinstance(blk, Block)
            blk.mlp.up.weight.zero_()
            blk.mlp.down.weight.zero_()
            tc.b_dec[layer].copy_(blk.mlp.down.bias)
        for w in tc.W_dec or []:
            w.zero_()
    tokens = torch.randint(1, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 0
    s = splice(model, tc, tokens)
    assert s.ce_replaced == s.ce_clean and s.top1_agreement == 1.0 and s.kl == 0.0
    assert s.ce_recovered == 1.0


def test_evaluate_report_and_plot(tmp_path):
    model = random_model(tiny_config("llama"))
    tc = random_transcoder(input_hook=HookPoint.RESID_MID).double()
    stream = torch.randint(3, 50, (2000,), dtype=torch.int32)
    r = evaluate(model, tc, stream, tokens=300, ce_tokens=100, seq_len=16)
    assert r.tokens == 300 and len(r.layers) == 3 and r.splice.tokens >= 100
    assert math.isclose(r.total_l0, sum(s.l0 for s in r.layers))
    assert "recovered" in table(r)
    plot(r, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
