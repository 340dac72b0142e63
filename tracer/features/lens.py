"""Weight-only views of features: what each one writes to the logits, and which input tokens excite it.

1. Output side (logit lens): the feature's decoder summed over every layer it writes (a CLT feature of layer l
   writes layers l..L-1; a PLT feature only l), times the final norm's gain (the norm's denominator is taken as 1:
   it is a per-token positive scale, so the ranking of tokens does not depend on it; LayerNorm also centres the
   vector), through the unembedding -> [vocab] logit effect per unit activation.
2. Input side: the encoder's pre-activation on each token's embedding alone (the direct path), passed through the
   norm that the encoder's input hook applies at its layer (MLP_IN: layer l's MLP norm; RESID_MID: none).
3. Both keep the n largest (and for the logits also the n most negative) per feature, computed in feature chunks so
   memory stays at [chunk, vocab].
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tracer.models import HookPoint, Transformer
from tracer.models.config import NormKind
from transcoders import Transcoder
from transcoders.config import TranscoderKind


class TokenLists(NamedTuple):
    ids: torch.Tensor  # [N, n] int64 token ids, N = L·F (layer-major)
    values: torch.Tensor  # [N, n] float32


class Lens(NamedTuple):
    top_logits: TokenLists
    bottom_logits: TokenLists
    top_inputs: TokenLists
    logit_z: torch.Tensor  # [N] robust z of the top logit: (top - median) / (1.4826 MAD) over the vocabulary
    logit_gap: torch.Tensor  # [N] (top - second) / std over the vocabulary: how alone the top token is
    input_z: torch.Tensor  # [N] robust z of the top input token


def _topk(scores: torch.Tensor, n: int, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    v, i = scores.topk(min(n, scores.shape[1]), dim=1, largest=largest)
    return i, v


def _z(scores: torch.Tensor) -> torch.Tensor:
    """Robust z-score of each row's maximum [n] (inf when more than half the row is one value)."""
    med = scores.median(1).values
    mad = (scores - med[:, None]).abs().median(1).values * 1.4826
    return (scores.max(1).values - med) / mad


def _gap(scores: torch.Tensor) -> torch.Tensor:
    top2 = scores.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) / scores.std(1).clamp_min(1e-12)


@torch.no_grad()
def feature_lens(model: Transformer, tc: Transcoder, n: int = 10, chunk: int = 1024) -> Lens:
    """Steps 1-3 of the module docstring, float32."""
    W_U = model.unembed.weight.float()  # [V, D]
    E = model.embed.weight.float() * (getattr(model.cfg, "embed_scale", 0.0) or 1.0)  # [V, D] as the model scales it
    gain = model.ln_f.gain.float()
    center = model.cfg.norm == NormKind.LAYERNORM
    tl, tv, bl, bv, il, iv, lz, lg, iz = [], [], [], [], [], [], [], [], []
    for layer in range(tc.cfg.n_layers):
        dec = tc.decoder(layer).float()  # [F, n_out, D]
        direction = dec.sum(1) if tc.cfg.kind == TranscoderKind.CLT else dec[:, 0]  # 1.
        if tc.cfg.input_hook == HookPoint.MLP_IN:  # 2.
            ln = model.block(layer).ln2
            x = ln.normalize(E.to(ln.weight.dtype), ln.scale(E.to(ln.weight.dtype))).float()
        else:
            x = E
        for s in range(0, tc.cfg.n_features, chunk):
            d = direction[s : s + chunk] * gain
            if center:
                d = d - d.mean(1, keepdim=True)
            logits = d @ W_U.T  # [c, V]
            for (i, v), (li, lv) in (((_topk(logits, n)), (tl, tv)), ((_topk(logits, n, largest=False)), (bl, bv))):
                li.append(i)
                lv.append(v)
            lz.append(_z(logits))
            lg.append(_gap(logits))
            pre = x @ tc.W_enc[layer, s : s + chunk].float().T + tc.b_enc[layer, s : s + chunk].float()  # [V, c]
            i, v = _topk(pre.T, n)
            il.append(i)
            iv.append(v)
            iz.append(_z(pre.T))
    cat = torch.cat
    return Lens(TokenLists(cat(tl), cat(tv)), TokenLists(cat(bl), cat(bv)), TokenLists(cat(il), cat(iv)),
                cat(lz), cat(lg), cat(iz))  # fmt: skip
