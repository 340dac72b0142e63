"""The textbook way to get attribution rows, as circuit-tracer does it: for every batch of targets, run the whole
prompt forward B times with frozen patterns and norm scales, then autograd backward through every layer and
position. Used by bench_attribution.py as the in-process baseline and as an fp32 cross-check of our rows."""

from __future__ import annotations

import torch

from tracer.backward import Injections
from tracer.models import HookPoint, Site, Transformer
from tracer.record import Record
from transcoders import Transcoder


def autograd_grads(model: Transformer, tc: Transcoder, rec: Record, inj: Injections):
    """-> (grads [B, L, P, D] w.r.t. MLP outputs, grads [B, P, D] w.r.t. token embeddings)."""
    L, P, D, B = model.cfg.n_layers, rec.n_pos, model.cfg.d_model, len(inj.layer)
    leaves = [torch.zeros(B, P, D, dtype=rec.mlp_out.dtype, requires_grad=True) for _ in range(L + 1)]
    inputs: dict[int, torch.Tensor] = {}

    def mlp_out(layer: int):
        def fn(_: torch.Tensor) -> torch.Tensor:
            out = rec.mlp_out[:, layer][None] + leaves[layer]
            if tc.W_skip is not None:  # the skip path stays linear in the replacement model
                s = inputs[layer] @ tc.W_skip[layer].T
                out = out + s - s.detach()
            return out

        return fn

    def keep(layer: int):
        def fn(x: torch.Tensor) -> None:
            inputs[layer] = x

        return fn

    fns = {Site(HookPoint.LNF_SCALE): lambda _: rec.lnf_scale[None], Site(HookPoint.EMBED): lambda x: x + leaves[L]}
    for i in range(L):
        fns[Site(HookPoint.ATTN_PATTERN, i)] = lambda _, i=i: rec.patterns[i][None].expand(B, -1, -1, -1)
        fns[Site(HookPoint.LN1_SCALE, i)] = lambda _, i=i: rec.ln1_scale[i][None]
        fns[Site(HookPoint.LN2_SCALE, i)] = lambda _, i=i: rec.ln2_scale[i][None]
        fns[Site(tc.cfg.input_hook, i)] = keep(i)
        fns[Site(HookPoint.MLP_OUT, i)] = mlp_out(i)
    with torch.enable_grad(), model.hooks.attached(fns), model.hooks.capture([Site(HookPoint.FINAL)]) as cache:
        model(rec.tokens[None].expand(B, -1))
        read = torch.stack([cache[Site(HookPoint.FINAL)]] + [inputs[i] for i in range(L)])  # [L+1, B, P, D]
        which = torch.where(inj.layer >= L, 0, inj.layer + 1)
        objective = (read[which, torch.arange(B), inj.pos] * inj.vectors.to(read.dtype)).sum()
        objective.backward()
    grads = torch.stack([leaf.grad for leaf in leaves[:L]], 1)  # type: ignore[misc]
    return grads, leaves[L].grad
