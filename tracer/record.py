"""Record one prompt's forward pass and rebuild the local replacement model from it.

1. Forward: run the model once, capturing attention patterns, norm denominators, transcoder inputs and MLP outputs.
2. Encode: transcoder activations from the recorded inputs; features at position 0 (BOS) are dropped.
3. Errors: error = true MLP output - (decoded features + decoder bias + skip), so the replacement is exact.
4. `frozen_forward`: a context manager that runs the model as the local replacement model (patterns and norm scales
   from the record, MLP outputs = decode(features) + skip(current input) + error). It is the independent
   reference the perturbation tests use, and the exactness check of a trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import torch

from tracer.finite import check_finite
from tracer.models import HookPoint, Site, Transformer
from tracer.models.hooks import HookFn
from transcoders import Transcoder


@dataclass
class Record:
    tokens: torch.Tensor  # [P] int64 (BOS first)
    logits: torch.Tensor  # [P, vocab]
    patterns: list[torch.Tensor]  # per layer [H, P, P]
    ln1_scale: torch.Tensor  # [L, P, 1]
    ln2_scale: torch.Tensor  # [L, P, 1]
    lnf_scale: torch.Tensor  # [P, 1]
    tc_input: torch.Tensor  # [P, L, D] values at the transcoder's input hook
    mlp_out: torch.Tensor  # [P, L, D] true MLP outputs
    acts: torch.Tensor  # [P, L, F] transcoder activations, zero at position 0
    errors: torch.Tensor  # [P, L, D] true MLP output - reconstruction (position 0 included: it stays constant)
    features: torch.Tensor  # [N, 3] int64 (layer, pos, feature) of the active features (non-zero acts)
    attn_post_scale: torch.Tensor | None = None  # [L, P, 1] post-attention-norm denominators (Gemma), else None

    @property
    def n_pos(self) -> int:
        return int(self.tokens.numel())

    def upcast(self) -> Record:
        """A copy with fp16/bf16 tensors in fp32 (fp32/fp64 records returned as they are): a half-precision forward
        pass is recorded once, the linear attribution accumulates in fp32."""
        if self.mlp_out.dtype not in (torch.float16, torch.bfloat16):
            return self
        up = lambda t: t.float() if t is not None and t.is_floating_point() else t  # noqa: E731
        return replace(self, **{f.name: ([up(t) for t in v] if isinstance(v := getattr(self, f.name), list) else up(v))
                                for f in fields(self)})  # fmt: skip


def _stack(cache: dict[Site, torch.Tensor], point: HookPoint, n_layers: int) -> torch.Tensor:
    return torch.stack([cache[Site(point, layer)][0] for layer in range(n_layers)])


@torch.no_grad()
def record(model: Transformer, tc: Transcoder, tokens: torch.Tensor) -> Record:
    """tokens [P] (BOS first) -> Record."""
    L = model.cfg.n_layers
    points = (HookPoint.ATTN_PATTERN, HookPoint.LN1_SCALE, HookPoint.LN2_SCALE, HookPoint.MLP_OUT, tc.cfg.input_hook)
    if model.cfg.post_norms:
        points += (HookPoint.ATTN_POST_SCALE,)
    sites = [Site(p, layer) for p in points for layer in range(L)] + [Site(HookPoint.LNF_SCALE)]
    # 1. Forward
    with model.hooks.capture(sites) as cache:
        logits = model(tokens[None])[0]
    tc_input = _stack(cache, tc.cfg.input_hook, L).transpose(0, 1)  # [P, L, D]
    mlp_out = _stack(cache, HookPoint.MLP_OUT, L).transpose(0, 1)
    # 2. Encode (BOS features dropped: position 0 has a huge norm and would dominate every graph)
    x = tc_input.to(tc.W_enc.dtype)
    acts = tc.encode(x)
    acts[0] = 0
    # 3. Errors; at position 0 the error also carries the dropped BOS features, so the model is reproduced exactly
    recon = tc.decode(acts) + tc.skip(x)
    acts, recon = acts.to(mlp_out.dtype), recon.to(mlp_out.dtype)
    errors = mlp_out - recon
    ln1, ln2 = _stack(cache, HookPoint.LN1_SCALE, L), _stack(cache, HookPoint.LN2_SCALE, L)
    lnf = cache[Site(HookPoint.LNF_SCALE)][0]
    post = _stack(cache, HookPoint.ATTN_POST_SCALE, L) if model.cfg.post_norms else None
    # a NaN activation is non-zero: it would make every feature active and every influence series diverge; an
    # overflowing norm input gives an inf denominator, which zeroes the residual while all else stays finite
    scales = [("norm denominators", sc) for sc in (ln1, ln2, lnf, post) if sc is not None]
    check_finite((("logits", logits), ("activations", acts), ("errors", errors), *scales),
                 "forward pass on this prompt (overflow, or NaN in lazily read decoders)")  # fmt: skip
    nz = acts.nonzero()  # [N, 3] (pos, layer, feature)
    return Record(
        tokens=tokens, logits=logits, patterns=[cache[Site(HookPoint.ATTN_PATTERN, i)][0] for i in range(L)],
        ln1_scale=ln1, ln2_scale=ln2, lnf_scale=lnf, tc_input=tc_input, mlp_out=mlp_out, acts=acts,
        errors=errors, features=nz[:, [1, 0, 2]].contiguous(), attn_post_scale=post,
    )  # fmt: skip


def frozen_sites(rec: Record, n_layers: int) -> dict[Site, HookFn]:
    """Hook functions that replace every attention pattern and norm denominator by the recorded ones (for use
    inside `model.hooks.attached`): with them the residual stream is linear in the MLP outputs and embeddings."""
    # values come back in the running model's dtype (a record may have been upcast for attribution)
    fns: dict[Site, HookFn] = {Site(HookPoint.LNF_SCALE): lambda v: rec.lnf_scale[None].to(v.dtype)}
    for i in range(n_layers):
        fns[Site(HookPoint.ATTN_PATTERN, i)] = lambda v, i=i: rec.patterns[i][None].to(v.dtype)
        fns[Site(HookPoint.LN1_SCALE, i)] = lambda v, i=i: rec.ln1_scale[i][None].to(v.dtype)
        fns[Site(HookPoint.LN2_SCALE, i)] = lambda v, i=i: rec.ln2_scale[i][None].to(v.dtype)
        if rec.attn_post_scale is not None:  # Gemma's post-attention norm, frozen like the others
            fns[Site(HookPoint.ATTN_POST_SCALE, i)] = \
                lambda v, i=i: rec.attn_post_scale[i][None].to(v.dtype)  # type: ignore[index]
    return fns


@contextmanager
def frozen_forward(
    model: Transformer, tc: Transcoder, rec: Record, acts: torch.Tensor, errors: torch.Tensor
) -> Iterator[dict[int, torch.Tensor]]:
    """Inside the block, `model(rec.tokens[None])` runs the local replacement model with the given feature
    activations [P, L, F] and error vectors [P, L, D]. Yields {layer: transcoder input [P, D]} of the last run."""
    L = model.cfg.n_layers
    inputs: dict[int, torch.Tensor] = {}
    dt = tc.W_enc.dtype
    decoded = tc.decode(acts.to(dt)).to(errors.dtype)  # [P, L, D] incl. decoder bias

    def keep_input(layer: int) -> HookFn:
        def fn(x: torch.Tensor) -> None:
            inputs[layer] = x[0]

        return fn

    def mlp_out(layer: int):
        def fn(v: torch.Tensor) -> torch.Tensor:
            out = decoded[:, layer] + errors[:, layer]
            if tc.W_skip is not None:  # the skip path reads this run's input: it stays linear in the sources
                out = out + (inputs[layer].to(dt) @ tc.W_skip[layer].T).to(errors.dtype)
            return out[None].to(v.dtype)

        return fn

    fns = frozen_sites(rec, L)
    for i in range(L):
        fns[Site(tc.cfg.input_hook, i)] = keep_input(i)
        fns[Site(HookPoint.MLP_OUT, i)] = mlp_out(i)
    with model.hooks.attached(fns):
        yield inputs
