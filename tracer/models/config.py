"""Architecture description shared by every supported family (GPT-2, the Llama family, Gemma-2 and Gemma-3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from tracer.errors import ConfigError


class NormKind(str, Enum):
    LAYERNORM = "layernorm"  # (x - mean) / sqrt(var + eps) * w + b
    RMSNORM = "rmsnorm"  # x / sqrt(mean(x^2) + eps) * w


class MlpKind(str, Enum):
    GELU = "gelu"  # down(gelu_tanh(up(x)))  (GPT-2)
    SWIGLU = "swiglu"  # down(silu(gate(x)) * up(x))  (Llama family)
    GEGLU = "geglu"  # down(gelu_tanh(gate(x)) * up(x))  (Gemma)


class PosKind(str, Enum):
    LEARNED = "learned"  # absolute position embeddings added to the token embeddings
    ROPE = "rope"  # rotary embeddings on queries and keys


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency scaling (`rope_type: llama3`) or linear position interpolation."""

    kind: str = "none"  # none | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """One transformer: pre-norm blocks of attention then MLP, each added to the residual stream."""

    family: str  # HF model_type it came from (gpt2, llama, qwen2, qwen3, mistral); written back on save
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    vocab_size: int
    n_ctx: int
    n_kv_heads: int = 0  # 0 = same as n_heads (no grouped-query attention)
    d_head: int = 0  # 0 = d_model // n_heads
    norm: NormKind = NormKind.RMSNORM
    mlp: MlpKind = MlpKind.SWIGLU
    pos: PosKind = PosKind.ROPE
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm of queries and keys (Qwen3)
    tied_embeddings: bool = True
    sliding_window: int = 0  # 0 = full causal attention
    local_layers: tuple[int, ...] | None = None  # layers that use the sliding window (None: all of them)
    rope_local_theta: float = 0.0  # RoPE base of the sliding-window layers, unscaled (Gemma-3); 0 = rope_theta
    norm_offset: float = 0.0  # every norm multiplies by (offset + w): Gemma stores w with offset 1
    embed_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(d_model))
    post_norms: bool = False  # RMSNorm on the attention and MLP outputs before the residual add (Gemma)
    attn_scale: float = 0.0  # query pre-scaling of the scores; 0 = 1/sqrt(d_head) (Gemma: query_pre_attn_scalar^-0.5)
    attn_softcap: float = 0.0  # scores -> c * tanh(scores / c) before the mask (Gemma-2); 0 = off
    final_softcap: float = 0.0  # logits -> c * tanh(logits / c) (Gemma-2); 0 = off
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.n_kv_heads == 0:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.d_head == 0:
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        if min(self.n_layers, self.d_model, self.n_heads, self.d_mlp, self.vocab_size, self.n_ctx) <= 0:
            raise ConfigError(f"model config has a non-positive size: {self}")
        if self.local_layers is not None:
            object.__setattr__(self, "local_layers", tuple(int(i) for i in self.local_layers))
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    def window(self, layer: int) -> int:
        """Sliding-window size of `layer` (0: full causal attention)."""
        if self.local_layers is not None and layer not in self.local_layers:
            return 0
        return self.sliding_window
