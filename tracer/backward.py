"""Exact backward pass of the local replacement model, written out as the linear map it is.

With attention patterns and norm denominators frozen and every MLP replaced by transcoder features (constants) +
skip + error (constant), the residual stream is linear in its sources, so the gradient of any target's
pre-activation is a fixed linear map we apply directly instead of through autograd:
1. Inject: each batch element starts with one read-out vector at its target's site — a logit direction through the
   final norm at the last position, or a feature's encoder row through the MLP norm (if the transcoder reads the
   normalised MLP input) at its layer and position.
2. Descend layers from the highest target's layer down to 0. At layer l, the current gradient is d/d(mlp_out_l),
   stored; then add the skip path and the injections of targets at layer l, and cross attention:
   g_pre = g_mid + J_ln1^T · V^T · A^T · O^T · J_post^T · g_mid (frozen pattern A, value/output projections V,
   O; J_post: Gemma's post-attention norm with its frozen denominator, identity elsewhere).
   Folded once per prompt (`_fold`): a norm's J^T is "times gain, centre (LayerNorm), divide by the position's
   denominator"; gain and centring are linear maps on d_model, so they are multiplied into the neighbouring
   weight (V, O, the skip matrix); the denominators stay one divide per path, in place. Each layer is then matmuls
   plus two divides (Gemma: three): in bf16 the elementwise passes were a third of the backward and did not speed
   up.
3. The gradient left at the bottom is d/d(token embedding) (the scaled one for Gemma).
Frozen on the prompt, hence constants of the linear map: attention patterns (incl. Gemma-2's score soft-cap and
the sliding windows), every norm denominator (pre-, post-attention, MLP and final norms). The post-MLP norm and
the MLP sit inside MLP_OUT, which the transcoder replaces. Logit targets are pre-soft-cap logit directions (the
final soft-cap is monotone per token and is applied after the unembedding).
The transcoder's input hook is RESID_MID (identity), MLP_IN (norm incl. weight) or LN2_NORMALIZED (the
standardised input before the weight, TransformerLens's `ln2.hook_normalized`).
Positions after the batch's last target position never matter (causal), so the batch is cut there; nor does the
top layer's MLP output for a batch of feature targets (they read that layer's MLP input), so it is not returned.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from tracer.models import HookPoint, NormKind, Transformer
from tracer.models.transformer import Norm
from tracer.record import Record
from transcoders import Transcoder


class Injections(NamedTuple):
    layer: torch.Tensor  # [B] int64 target layer; n_layers for logit targets
    pos: torch.Tensor  # [B] int64 target position
    vectors: torch.Tensor  # [B, D] read-out vector at the target's read hook


class Grads(NamedTuple):
    mlp_out_BPLD: torch.Tensor  # [B, P', L', D] d target / d mlp_out[layer, pos] (L': layers below the highest
    # target's; with a logit target, every layer)
    embed_BPD: torch.Tensor  # [B, P', D] d target / d token embedding


def standardize_transpose(norm: Norm, scale: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """J^T g of a norm's standardisation (before its weight) with a frozen denominator: scale [P, 1], g [B, P, D]."""
    out = g / scale
    return out - out.mean(-1, keepdim=True) if norm.kind == NormKind.LAYERNORM else out


def norm_transpose(norm: Norm, scale: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """J^T g of a norm with a frozen denominator: scale [P, 1], g [B, P, D]."""
    return standardize_transpose(norm, scale, g * norm.gain)


def fold_after(norm: Norm, W: Tensor, gain: bool = True) -> Tensor:
    """W [n, D] -> W' with (x @ W') = J^T-without-denominator of `norm` applied to x @ W: W diag(gain), then each
    row centred (LayerNorm's J^T subtracts the mean over d_model). gain False: the standardisation alone (a read
    hook before the norm's weight)."""
    W = W.double() * norm.gain.double() if gain else W.double()
    return W - W.mean(-1, keepdim=True) if norm.kind == NormKind.LAYERNORM else W


def fold_before(norm: Norm, W: Tensor) -> Tensor:
    """W [D, n] -> diag(gain) C W (C: LayerNorm's centring, identity for RMSNorm): J_norm^T g @ W = g @ W' / scale."""
    W = W.double()
    if norm.kind == NormKind.LAYERNORM:
        W = W - W.mean(0, keepdim=True)
    return W * norm.gain.double()[:, None]


class ReplacementBackward:
    """Holds the frozen linear maps of one recorded prompt."""

    def __init__(
        self,
        model: Transformer,
        tc: Transcoder,
        rec: Record,
        dtype: torch.dtype | None = None,
        reuse_out: bool = False,
    ) -> None:
        """dtype: compute in this dtype (the bf16 fast path); default fp32 at least (a half-precision model's
        attribution runs in fp32). The folded maps are computed in float64 from the model's own weights and
        rounded once to dtype.
        reuse_out: every `run` returns its gradients in one buffer that the next `run` overwrites (the row phase
        consumes each batch first): a fresh [B, P', L', D] buffer per batch costs as much as the copies into it
        (the allocator returns it to the OS, and each page faults again). The gradients are then a view
        [:B, :P', :L'] of a [B_max, P, L, D] buffer, with the same strides in every batch: oneDNN's bf16 matmuls
        JIT-compile a kernel per (shape, strides) and cache it, and per-batch strides cost a compile per call."""
        self.model, self.tc, self.rec = model, tc, rec
        self.cfg = model.cfg
        self.input_hook = tc.cfg.input_hook
        self.dtype = dtype or torch.promote_types(rec.mlp_out.dtype, torch.float32)
        self.reuse_out = reuse_out
        self.device = rec.mlp_out.device
        self._out_buf = torch.empty(0, 0, 0, 0, dtype=self.dtype, device=self.device)
        self._scratch_bufs = [torch.empty(0, dtype=self.dtype, device=self.device) for _ in range(3)]
        self.flops = 0  # matmul work done so far (2 x multiply-adds), for benchmarks
        self._fold()

    def _fold(self) -> None:
        """Step 2's folded maps, per layer in self.dtype (computed in float64, rounded once): skip [D, D] (the read
        hook's gain and centring folded in), O [D, H*dh] (Gemma's post-attention gain and centring), V [KV*dh, D]
        (ln1's). The denominators stay per-position divides: folding them into a copy of every pattern cost as much
        memory as the record's patterns (0.9 GB for a 26-layer, 8-head model at 1,024 tokens), for no measurable
        speed."""
        rec, dt = self.rec, self.dtype
        self._skip_W: list[Tensor | None] = []
        self._o_W: list[Tensor] = []
        self._v_W: list[Tensor] = []
        self._pat: list[Tensor] = []
        for layer in range(self.cfg.n_layers):
            blk = self.model.block(layer)
            skip = None
            if self.tc.W_skip is not None:
                W = self.tc.W_skip[layer]
                if self.input_hook in (HookPoint.MLP_IN, HookPoint.LN2_NORMALIZED):
                    W = fold_after(blk.ln2, W, gain=self.input_hook == HookPoint.MLP_IN)
                skip = W.to(dt)
            self._skip_W.append(skip)
            post = blk.ln1_post if rec.attn_post_scale is not None else None
            o = blk.attn.o.weight if post is None else fold_before(post, blk.attn.o.weight)
            self._o_W.append(o.to(dt))
            self._v_W.append(fold_after(blk.ln1, blk.attn.v.weight).to(dt))
            self._pat.append(rec.patterns[layer].to(dt))  # no copy when the dtypes match (the exact path)
        self._ln1_scale, self._ln2_scale = rec.ln1_scale.to(dt), rec.ln2_scale.to(dt)  # [L, P, 1]
        self._post_scale = None if rec.attn_post_scale is None else rec.attn_post_scale.to(dt)

    def _read_transpose(self, layer: int, pos: slice | torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """J^T of the transcoder's input hook w.r.t. resid_mid for g [..., D] at positions `pos` (a slice of the
        prompt for [B, P', D], or one position per row for [n, D])."""
        ln2, scale = self.model.block(layer).ln2, self.rec.ln2_scale[layer, pos]
        if self.input_hook == HookPoint.MLP_IN:
            return norm_transpose(ln2, scale, g)
        if self.input_hook == HookPoint.LN2_NORMALIZED:
            return standardize_transpose(ln2, scale, g)
        return g

    def _attn_transpose(self, layer: int, g: torch.Tensor) -> None:
        """g [B, P', D] += (d attn_out / d resid_pre)^T g (pattern frozen; folded maps, step 2)."""
        cfg = self.cfg
        B, P, D = g.shape
        self.flops += 2 * B * P * (cfg.d_model * cfg.n_heads * cfg.d_head * 2 + cfg.n_heads * P * cfg.d_head)
        H, KV, dh = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        # heads outermost and batch folded into columns: one bmm of [P, P] x [P, B*dh] per head
        # the denominators divide the rows of the fresh intermediates in place: no temporary the size of g
        u = torch.mm(g.view(B * P, D), self._o_W[layer], out=self._scratch(0, (B * P, H * dh)))
        if self._post_scale is not None:
            u.view(B, P, -1).div_(self._post_scale[layer, :P])
        u = self._scratch(1, (H, P, B, dh)).copy_(u.view(B, P, H, dh).permute(2, 1, 0, 3)).view(H, P, B * dh)
        v = torch.bmm(self._pat[layer][:, :P, :P].transpose(1, 2), u, out=self._scratch(0, (H, P, B * dh)))
        if KV != H:  # GQA: heads of a group share values (a sum over one head would only copy)
            v = v.view(KV, H // KV, P, B, dh).sum(1)
        v = self._scratch(1, (B, P, KV, dh)).copy_(v.view(KV, P, B, dh).permute(2, 1, 0, 3)).view(B, P, KV * dh)
        v.div_(self._ln1_scale[layer, :P])
        g.view(B * P, D).addmm_(v.view(B * P, KV * dh), self._v_W[layer])

    def _attn_transpose_at(self, layer: int, pos: torch.Tensor, g_BD: torch.Tensor, n_pos: int) -> torch.Tensor:
        """`_attn_transpose`'s addend [B, P', D] for a gradient that is non-zero only at one position per element
        (pos [B], g_BD [B, D]): the value gradient is that position's pattern row times one vector per head, so
        the V projection costs B*H*dh*D instead of B*P*H*dh*D."""
        cfg = self.cfg
        B, H, dh = g_BD.shape[0], cfg.n_heads, cfg.d_head
        self.flops += 2 * B * (H * dh * cfg.d_model * 2 + n_pos * H * cfg.d_model)
        if self._post_scale is not None:
            g_BD = g_BD / self._post_scale[layer, pos]
        u = (g_BD @ self._o_W[layer]).view(B, H, dh)
        wv = self._v_W[layer].view(cfg.n_kv_heads, dh, -1).repeat_interleave(H // cfg.n_kv_heads, dim=0)
        w = torch.einsum("bhe,hed->bhd", u, wv)  # [B, H, D]
        rows = self._pat[layer][:, pos, :n_pos]  # [H, B, P']: each element's pattern row at its query
        return torch.einsum("hbk,bhd->bkd", rows, w).div_(self._ln1_scale[layer, :n_pos])

    def _skip_transpose(self, layer: int, g: torch.Tensor) -> None:
        """g [B, P', D] += the skip path's J^T g: one matmul and one fused add-divide."""
        W = self._skip_W[layer]
        if W is None:
            return
        B, P, D = g.shape
        y = torch.mm(g.view(B * P, D), W, out=self._scratch(0, (B * P, D))).view(B, P, D)
        if self.input_hook == HookPoint.RESID_MID:
            g.add_(y)
        else:
            g.addcdiv_(y, self._ln2_scale[layer, :P])

    def _scratch(self, i: int, shape: tuple[int, ...]) -> torch.Tensor:
        """A contiguous [shape] view of scratch buffer i (0, 1: a layer's intermediates; 2: the running gradient, with
        reuse_out), grown as needed and reused by every layer and batch: fresh intermediates cost page faults (the
        allocator hands big blocks back to the OS; fp32 rows at 128 tokens: 888 k faults, 1.6 s of system time)."""
        n = math.prod(shape)
        if self._scratch_bufs[i].numel() < n:
            self._scratch_bufs[i] = torch.empty(n, dtype=self.dtype, device=self.device)
        return self._scratch_bufs[i][:n].view(shape)

    def _out_buffer(self, shape: tuple[int, int, int, int]) -> torch.Tensor:
        if not self.reuse_out:
            return torch.empty(shape, dtype=self.dtype, device=self.device)
        B, P, Lp, D = shape
        if self._out_buf.shape[0] < B:  # one allocation per prompt (at most per larger batch): fixed strides
            full = (B, self.rec.mlp_out.shape[0], self.cfg.n_layers, D)
            self._out_buf = torch.empty(full, dtype=self.dtype, device=self.device)
        return self._out_buf[:B, :P, :Lp]

    def run(self, inj: Injections) -> Grads:
        """One batch of targets -> gradients at every MLP output and token embedding (see module docstring)."""
        L, D = self.cfg.n_layers, self.cfg.d_model
        B, P = int(inj.layer.numel()), int(inj.pos.max()) + 1
        top = min(int(inj.layer.max()), L - 1)  # layers above the highest target carry no gradient
        # a feature target at layer l reads the MLP input of l, before mlp_out_l: the gradient at mlp_out_top is zero
        # unless a logit target (which reads after the last MLP) is in the batch, so it is not returned (the edge
        # kernel and error edges would multiply zeros: up to 1/L of the kernel's work per batch)
        n_out = top + 1 if bool((inj.layer > top).any()) else top
        out = self._out_buffer((B, P, n_out, D))  # not zeroed: every returned layer is written
        fresh = not self.reuse_out  # the running gradient is returned as the embedding gradient
        g = torch.zeros(B, P, D, dtype=self.dtype, device=self.device) if fresh else self._scratch(2, (B, P, D)).zero_()
        # 1. Inject logit targets through the final norm
        is_logit = inj.layer >= L
        if is_logit.any():
            b = is_logit.nonzero()[:, 0]
            g[b, inj.pos[b]] = norm_transpose(self.model.ln_f, self.rec.lnf_scale[inj.pos[b]][None],
                                              inj.vectors[b][None])[0].to(self.dtype)  # fmt: skip
        # 2. Descend. When every target sits at the top layer, the gradient there is one vector per element.
        single = bool((inj.layer == top).all()) and top < L
        for layer in range(top, -1, -1):
            if layer < n_out:  # else g is still zero here: nothing to store, and the skip path of zero is zero
                out[:, :, layer] = g
                self._skip_transpose(layer, g)  # the skip path is linear, so gradient crosses it
            here = (inj.layer == layer).nonzero()[:, 0]
            if here.numel():
                g[here, inj.pos[here]] += self._read_transpose(layer, inj.pos[here], inj.vectors[here]).to(self.dtype)
            if single and layer == top:
                g = g + self._attn_transpose_at(layer, inj.pos, g[torch.arange(B), inj.pos], P)
            else:
                self._attn_transpose(layer, g)
        # 3. What is left reaches the token embeddings
        return Grads(out, g)
