"""A compact pre-norm transformer covering GPT-2, the Llama family, Gemma-2 and Gemma-3, with named hook points.

Forward pass (one block, repeated n_layers times), with the hook point called at each step:
1. EMBED: token embeddings (x embed_scale; + learned positions for GPT-2) -> RESID_PRE.
2. Attention: LN1_SCALE (norm denominator) -> q, k, v (q/k norms, rotary with the layer's base) -> scores
   (query pre-scaling, soft-cap, causal or sliding-window mask) -> ATTN_PATTERN -> [post-norm: ATTN_POST_SCALE]
   -> ATTN_OUT; RESID_MID = pre + out.
3. MLP: LN2_SCALE -> LN2_NORMALIZED (before the norm's weight) -> MLP_IN (after it) -> MLP (+ post-norm) -> MLP_OUT;
   RESID_POST = mid + out.
4. Final norm: LNF_SCALE -> FINAL -> unembedding (-> final soft-cap) -> LOGITS.
Norm denominators are hook points so that a caller can freeze them (the local replacement model) or read them.
Gemma's norms multiply by (1 + w) (`norm_offset`); its post-MLP norm sits inside MLP_OUT, so a transcoder that
writes MLP_OUT replaces it together with the MLP.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from tracer.models.config import MlpKind, ModelConfig, NormKind, PosKind
from tracer.models.hooks import HookPoint, HookRegistry


class Norm(nn.Module):
    def __init__(self, d: int, kind: NormKind, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.kind, self.eps, self.offset = kind, eps, offset
        self.weight = nn.Parameter(torch.full((d,), 1.0 - offset))
        self.bias = nn.Parameter(torch.zeros(d)) if kind == NormKind.LAYERNORM else None

    @property
    def gain(self) -> torch.Tensor:
        """The multiplier of the normalised input [d]: w, or (offset + w) for Gemma's stored weights."""
        return self.weight + self.offset if self.offset else self.weight

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The denominator [..., 1] that the normalisation divides by."""
        if self.kind == NormKind.LAYERNORM:
            return (x.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt()
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def standardize(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The normalised input before the weight and bias (TransformerLens's `hook_normalized`)."""
        if self.kind == NormKind.LAYERNORM:
            x = x - x.mean(-1, keepdim=True)
        return x / scale

    def affine(self, y: torch.Tensor) -> torch.Tensor:
        y = y * self.gain
        return y + self.bias if self.bias is not None else y

    def normalize(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.affine(self.standardize(x, scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x, self.scale(x))


def rope_inv_freq(cfg: ModelConfig, local: bool = False) -> torch.Tensor:
    """Rotary inverse frequencies [d_head/2], with Llama-3 or linear scaling applied (`local`: the sliding-window
    layers' own unscaled base, Gemma-3)."""
    theta = cfg.rope_local_theta if local else cfg.rope_theta
    inv = 1.0 / (theta ** (torch.arange(0, cfg.d_head, 2, dtype=torch.float64) / cfg.d_head))
    if local:
        return inv
    s = cfg.rope_scaling
    if s.kind == "linear":
        inv = inv / s.factor
    elif s.kind == "llama3":
        low_wl = s.original_max_position / s.low_freq_factor
        high_wl = s.original_max_position / s.high_freq_factor
        wl = 2 * math.pi / inv
        smooth = (s.original_max_position / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        scaled = torch.where(wl > low_wl, inv / s.factor, inv)
        mid = (wl <= low_wl) & (wl >= high_wl)
        inv = torch.where(mid, (1 - smooth) * inv / s.factor + smooth * inv, scaled)
    return inv


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, P, dh]; rotate-half convention of HF Llama."""
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-b, a), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.window = cfg.window(layer)
        self.local_rope = bool(self.window and cfg.rope_local_theta)  # uses the local RoPE base
        self.scale = cfg.attn_scale or 1 / math.sqrt(cfg.d_head)
        d, h, kv, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.q = nn.Linear(d, h * dh, bias=cfg.qkv_bias)
        self.k = nn.Linear(d, kv * dh, bias=cfg.qkv_bias)
        self.v = nn.Linear(d, kv * dh, bias=cfg.qkv_bias)
        self.o = nn.Linear(h * dh, d, bias=cfg.o_bias)
        self.q_norm = Norm(dh, NormKind.RMSNORM, cfg.norm_eps, cfg.norm_offset) if cfg.qk_norm else None
        self.k_norm = Norm(dh, NormKind.RMSNORM, cfg.norm_eps, cfg.norm_offset) if cfg.qk_norm else None

    def heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], n, self.cfg.d_head).transpose(1, 2)  # [B, n, P, dh]

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """Value vectors expanded to every query head [B, H, P, dh]."""
        v = self.heads(self.v(x), self.cfg.n_kv_heads)
        return v.repeat_interleave(self.cfg.n_heads // self.cfg.n_kv_heads, dim=1)

    def pattern(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Softmax attention weights [B, H, P, P] (causal, optional sliding window)."""
        cfg = self.cfg
        q, k = self.heads(self.q(x), cfg.n_heads), self.heads(self.k(x), cfg.n_kv_heads)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm.normalize(q, self.q_norm.scale(q))
            k = self.k_norm.normalize(k, self.k_norm.scale(k))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        k = k.repeat_interleave(cfg.n_heads // cfg.n_kv_heads, dim=1)
        scores = q @ k.transpose(-1, -2) * self.scale
        if cfg.attn_softcap:
            scores = cfg.attn_softcap * torch.tanh(scores / cfg.attn_softcap)
        p = x.shape[1]
        i = torch.arange(p, device=x.device)
        mask = i[None, :] > i[:, None]
        if self.window:
            mask |= i[None, :] <= i[:, None] - self.window
        return scores.masked_fill(mask, float("-inf")).softmax(-1)

    def mix(self, pattern: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Apply the pattern to the values and the output projection: [B, P, D]."""
        z = pattern @ self.values(x)  # [B, H, P, dh]
        return self.o(z.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class Mlp(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = cfg.mlp
        self.up = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.mlp_bias)
        gated = cfg.mlp in (MlpKind.SWIGLU, MlpKind.GEGLU)
        self.gate = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.mlp_bias) if gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            g = self.gate(x)
            act = F.silu(g) if self.kind == MlpKind.SWIGLU else F.gelu(g, approximate="tanh")
            return self.down(act * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        norm = lambda: Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.norm_offset)  # noqa: E731
        self.ln1 = norm()
        self.attn = Attention(cfg, layer)
        self.ln1_post = norm() if cfg.post_norms else None
        self.ln2 = norm()
        self.mlp = Mlp(cfg)
        self.ln2_post = norm() if cfg.post_norms else None

    def mlp_out(self, mlp_in: torch.Tensor) -> torch.Tensor:
        """What the MLP adds to the residual stream (incl. the post-MLP norm, which is not frozen: a transcoder
        that writes MLP_OUT replaces it)."""
        y = self.mlp(mlp_in)
        return self.ln2_post(y) if self.ln2_post is not None else y


class Transformer(nn.Module):
    """Decoder-only LM. `forward(tokens [B, P]) -> logits [B, P, vocab]`; hooks via `self.hooks`."""

    inv_freq: torch.Tensor  # rotary inverse frequencies (RoPE models only)
    inv_freq_local: torch.Tensor  # those of the sliding-window layers (Gemma-3 only)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model) if cfg.pos == PosKind.LEARNED else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.norm_offset)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tied_embeddings:
            self.unembed.weight = self.embed.weight
        self.hooks = HookRegistry()
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)compute the rotary frequencies on the CPU (after building on the meta device)."""
        cfg = self.cfg
        if cfg.pos != PosKind.ROPE:
            return
        with torch.device("cpu"):
            self.register_buffer("inv_freq", rope_inv_freq(cfg).float(), persistent=False)
            if cfg.rope_local_theta:
                self.register_buffer("inv_freq_local", rope_inv_freq(cfg, local=True).float(), persistent=False)

    def block(self, layer: int) -> Block:
        return cast(Block, self.blocks[layer])

    def rope(self, n_pos: int, dtype: torch.dtype, local: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.cfg.pos != PosKind.ROPE:
            return None
        inv = self.inv_freq_local if local else self.inv_freq
        pos = torch.arange(n_pos, dtype=torch.float64, device=inv.device)
        ang = torch.outer(pos, inv.double())
        ang = torch.cat((ang, ang), dim=-1)
        return ang.cos().to(dtype), ang.sin().to(dtype)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [...] -> the residual stream's token embeddings [..., D] (W_E rows times embed_scale)."""
        e = self.embed(tokens)
        if self.cfg.embed_scale != 1.0:  # a scalar in the weights' dtype, as transformers rounds it
            e = e * torch.tensor(self.cfg.embed_scale, dtype=e.dtype)
        return e

    def logits(self, final: torch.Tensor) -> torch.Tensor:
        """Normalised final residual [..., D] -> logits [..., vocab] (soft-capped for Gemma-2)."""
        out = self.unembed(final)
        c = self.cfg.final_softcap
        return c * torch.tanh(out / c) if c else out

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, P] int64 -> logits [B, P, vocab]."""
        h = self.hooks.apply
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ValueError(f"{tokens.shape[-1]} tokens exceed the context window of {self.cfg.n_ctx}")
        x = h(HookPoint.EMBED, 0, self.embed_tokens(tokens))
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(tokens.shape[-1], device=tokens.device))
        ropes = (self.rope(tokens.shape[-1], x.dtype), self.rope(tokens.shape[-1], x.dtype, local=True)
                 if self.cfg.rope_local_theta else None)  # fmt: skip
        for layer in range(self.cfg.n_layers):
            blk = self.block(layer)
            x = h(HookPoint.RESID_PRE, layer, x)
            s = h(HookPoint.LN1_SCALE, layer, blk.ln1.scale(x))
            xn = blk.ln1.normalize(x, s)
            pat = h(HookPoint.ATTN_PATTERN, layer, blk.attn.pattern(xn, ropes[blk.attn.local_rope]))
            a = blk.attn.mix(pat, xn)
            if blk.ln1_post is not None:
                a = blk.ln1_post.normalize(a, h(HookPoint.ATTN_POST_SCALE, layer, blk.ln1_post.scale(a)))
            x = h(HookPoint.RESID_MID, layer, x + h(HookPoint.ATTN_OUT, layer, a))
            s = h(HookPoint.LN2_SCALE, layer, blk.ln2.scale(x))
            normed = h(HookPoint.LN2_NORMALIZED, layer, blk.ln2.standardize(x, s))
            mlp_in = h(HookPoint.MLP_IN, layer, blk.ln2.affine(normed))
            x = h(HookPoint.RESID_POST, layer, x + h(HookPoint.MLP_OUT, layer, blk.mlp_out(mlp_in)))
        s = h(HookPoint.LNF_SCALE, 0, self.ln_f.scale(x))
        final = h(HookPoint.FINAL, 0, self.ln_f.normalize(x, s))
        return h(HookPoint.LOGITS, 0, self.logits(final))

    @torch.no_grad()
    def generate(self, tokens: list[int], max_new_tokens: int) -> list[int]:
        """Greedy decoding (no KV cache: prompts here are short)."""
        out = list(tokens)
        for _ in range(max_new_tokens):
            logits = self(torch.tensor([out[-self.cfg.n_ctx :]], device=self.embed.weight.device))
            out.append(int(logits[0, -1].argmax()))
            if out[-1] == self.cfg.eos_token_id:
                break
        return out
