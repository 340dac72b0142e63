"""A compact pre-norm transformer covering GPT-2 and the Llama family, with named hook points.

Forward pass (one block, repeated n_layers times), with the hook point called at each step:
1. EMBED: token embeddings (+ learned positions for GPT-2) -> RESID_PRE.
2. Attention: LN1_SCALE (norm denominator) -> q, k, v (+ rotary) -> ATTN_PATTERN -> ATTN_OUT; RESID_MID = pre + out.
3. MLP: LN2_SCALE -> MLP_IN (normalised input) -> MLP_OUT; RESID_POST = mid + out.
4. Final norm: LNF_SCALE -> FINAL -> unembedding -> LOGITS.
Norm denominators are hook points so that a caller can freeze them (the local replacement model) or read them.
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
    def __init__(self, d: int, kind: NormKind, eps: float) -> None:
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if kind == NormKind.LAYERNORM else None

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The denominator [..., 1] that the normalisation divides by."""
        if self.kind == NormKind.LAYERNORM:
            return (x.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt()
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def normalize(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if self.kind == NormKind.LAYERNORM:
            x = x - x.mean(-1, keepdim=True)
        y = x / scale * self.weight
        return y + self.bias if self.bias is not None else y


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Rotary inverse frequencies [d_head/2], with Llama-3 or linear scaling applied."""
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.d_head, 2, dtype=torch.float64) / cfg.d_head))
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
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, kv, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.q = nn.Linear(d, h * dh, bias=cfg.qkv_bias)
        self.k = nn.Linear(d, kv * dh, bias=cfg.qkv_bias)
        self.v = nn.Linear(d, kv * dh, bias=cfg.qkv_bias)
        self.o = nn.Linear(h * dh, d, bias=cfg.o_bias)
        self.q_norm = Norm(dh, NormKind.RMSNORM, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = Norm(dh, NormKind.RMSNORM, cfg.norm_eps) if cfg.qk_norm else None

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
        scores = q @ k.transpose(-1, -2) / math.sqrt(cfg.d_head)
        p = x.shape[1]
        i = torch.arange(p, device=x.device)
        mask = i[None, :] > i[:, None]
        if cfg.sliding_window:
            mask |= i[None, :] <= i[:, None] - cfg.sliding_window
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
        self.gate = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.mlp_bias) if cfg.mlp == MlpKind.SWIGLU else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ln2 = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.mlp = Mlp(cfg)


class Transformer(nn.Module):
    """Decoder-only LM. `forward(tokens [B, P]) -> logits [B, P, vocab]`; hooks via `self.hooks`."""

    inv_freq: torch.Tensor  # rotary inverse frequencies (RoPE models only)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model) if cfg.pos == PosKind.LEARNED else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tied_embeddings:
            self.unembed.weight = self.embed.weight
        self.hooks = HookRegistry()
        if cfg.pos == PosKind.ROPE:
            self.register_buffer("inv_freq", rope_inv_freq(cfg).float(), persistent=False)

    def block(self, layer: int) -> Block:
        return cast(Block, self.blocks[layer])

    def rope(self, n_pos: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.cfg.pos != PosKind.ROPE:
            return None
        pos = torch.arange(n_pos, dtype=torch.float64, device=self.inv_freq.device)
        ang = torch.outer(pos, self.inv_freq.double())
        ang = torch.cat((ang, ang), dim=-1)
        return ang.cos().to(dtype), ang.sin().to(dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, P] int64 -> logits [B, P, vocab]."""
        h = self.hooks.apply
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ValueError(f"{tokens.shape[-1]} tokens exceed the context window of {self.cfg.n_ctx}")
        x = h(HookPoint.EMBED, 0, self.embed(tokens))
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(tokens.shape[-1], device=tokens.device))
        rope = self.rope(tokens.shape[-1], x.dtype)
        for layer in range(self.cfg.n_layers):
            blk = self.block(layer)
            x = h(HookPoint.RESID_PRE, layer, x)
            s = h(HookPoint.LN1_SCALE, layer, blk.ln1.scale(x))
            xn = blk.ln1.normalize(x, s)
            pat = h(HookPoint.ATTN_PATTERN, layer, blk.attn.pattern(xn, rope))
            x = h(HookPoint.RESID_MID, layer, x + h(HookPoint.ATTN_OUT, layer, blk.attn.mix(pat, xn)))
            s = h(HookPoint.LN2_SCALE, layer, blk.ln2.scale(x))
            mlp_in = h(HookPoint.MLP_IN, layer, blk.ln2.normalize(x, s))
            x = h(HookPoint.RESID_POST, layer, x + h(HookPoint.MLP_OUT, layer, blk.mlp(mlp_in)))
        s = h(HookPoint.LNF_SCALE, 0, self.ln_f.scale(x))
        final = h(HookPoint.FINAL, 0, self.ln_f.normalize(x, s))
        return h(HookPoint.LOGITS, 0, self.unembed(final))

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
