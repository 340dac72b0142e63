"""Read and write Hugging Face checkpoints (config.json + safetensors) without `transformers`.

1. Config: map `config.json` of a supported `model_type` onto ModelConfig (Gemma-3's multimodal checkpoints: their
   `text_config`; the vision tower is not loaded).
2. Weights: read `model.safetensors` or the shards listed in `model.safetensors.index.json`; rename HF tensor
   names to ours (GPT-2's fused, transposed Conv1D weights are split and transposed).
3. Save: the reverse, as one `model.safetensors` plus `config.json`, loadable by `transformers` too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tracer.errors import ModelLoadError
from tracer.io import atomic_save_safetensors, atomic_write_text
from tracer.models.config import MlpKind, ModelConfig, NormKind, PosKind, RopeScaling

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
GEMMA_FAMILY = ("gemma2", "gemma3_text", "gemma3")
SUPPORTED = ("gpt2", *LLAMA_FAMILY, *GEMMA_FAMILY)
# defaults of transformers' Gemma3TextConfig that Gemma-3 multimodal configs leave out of their text_config
GEMMA3_TEXT_DEFAULTS = {"vocab_size": 262208, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
                        "query_pre_attn_scalar": 256, "sliding_window": 4096, "head_dim": 256,
                        "num_attention_heads": 8, "num_key_value_heads": 4, "bos_token_id": 2, "eos_token_id": 1}


def config_from_hf(c: dict) -> ModelConfig:
    """Map an HF config dict onto ModelConfig; unknown model types get a clear error."""
    kind = c.get("model_type")
    if kind not in SUPPORTED:
        raise ModelLoadError(f"unsupported architecture {kind!r}; supported: {', '.join(SUPPORTED)}")
    try:
        if kind in GEMMA_FAMILY:
            return _gemma_config(c)
        if kind == "gpt2":
            return ModelConfig(
                family=kind, n_layers=c["n_layer"], d_model=c["n_embd"], n_heads=c["n_head"],
                d_mlp=c.get("n_inner") or 4 * c["n_embd"], vocab_size=c["vocab_size"], n_ctx=c["n_positions"],
                norm=NormKind.LAYERNORM, mlp=MlpKind.GELU, pos=PosKind.LEARNED,
                norm_eps=c.get("layer_norm_epsilon", 1e-5), qkv_bias=True, o_bias=True, mlp_bias=True,
                tied_embeddings=True, bos_token_id=c.get("bos_token_id"), eos_token_id=c.get("eos_token_id"),
            )  # fmt: skip
        rs = c.get("rope_scaling") or c.get("rope_parameters") or {}  # transformers 5 writes rope_parameters
        scaling = _scaling(rs)
        window = c.get("sliding_window") or 0
        if kind in ("qwen2", "qwen3") and not c.get("use_sliding_window", False):
            window = 0
        return ModelConfig(
            family=kind, n_layers=c["num_hidden_layers"], d_model=c["hidden_size"],
            n_heads=c["num_attention_heads"], n_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
            d_head=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
            d_mlp=c["intermediate_size"], vocab_size=c["vocab_size"], n_ctx=c.get("max_position_embeddings", 2048),
            norm_eps=c.get("rms_norm_eps", 1e-6), rope_theta=c.get("rope_theta") or rs.get("rope_theta", 10000.0),
            rope_scaling=scaling,
            qkv_bias=kind == "qwen2" or c.get("attention_bias", False), o_bias=c.get("attention_bias", False),
            mlp_bias=c.get("mlp_bias", False), qk_norm=kind == "qwen3",
            tied_embeddings=c.get("tie_word_embeddings", False),  # transformers' default for these families
            sliding_window=window, bos_token_id=c.get("bos_token_id"), eos_token_id=_first(c.get("eos_token_id")),
        )  # fmt: skip
    except KeyError as e:
        raise ModelLoadError(f"config.json of {kind} model lacks the field {e}") from None


def _scaling(rs: dict) -> RopeScaling:
    rtype = rs.get("rope_type", rs.get("type", "none")) if rs else "none"
    if rtype not in ("none", "default", "linear", "llama3"):
        raise ModelLoadError(f"unsupported rope_scaling type {rtype!r}; supported: linear, llama3")
    return RopeScaling(
        kind="none" if rtype == "default" else rtype, factor=rs.get("factor", 1.0),
        low_freq_factor=rs.get("low_freq_factor", 1.0), high_freq_factor=rs.get("high_freq_factor", 4.0),
        original_max_position=rs.get("original_max_position_embeddings", 8192),
    )  # fmt: skip


def _gemma_config(c: dict) -> ModelConfig:
    """Gemma-2 / Gemma-3: (1 + w) RMSNorms before and after attention and MLP, GeGLU, scaled embeddings, query
    pre-scaling, soft-caps (Gemma-2), q/k norms and a local RoPE base (Gemma-3), alternating local/global layers."""
    kind = c["model_type"]
    if kind == "gemma3":  # multimodal checkpoint: the language model's config
        c = GEMMA3_TEXT_DEFAULTS | c.get("text_config", {}) | {"model_type": "gemma3"}
    n_layers = c["num_hidden_layers"]
    pattern = 2 if kind == "gemma2" else c.get("sliding_window_pattern", 6)
    types = c.get("layer_types") or ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                     for i in range(n_layers)]  # fmt: skip
    rp = c.get("rope_parameters") or {}
    if "full_attention" in rp:  # transformers 5 keeps one RoPE setting per layer type
        glob, loc = rp["full_attention"], rp.get("sliding_attention", {})
    else:
        glob, loc = (c.get("rope_scaling") or {}) | rp, {}
    theta = glob.get("rope_theta") or c.get("rope_theta") or (10000.0 if kind == "gemma2" else 1e6)
    local_theta = 0.0 if kind == "gemma2" else loc.get("rope_theta") or c.get("rope_local_base_freq") or 10000.0
    heads = c["num_attention_heads"]
    d_head = c.get("head_dim") or c["hidden_size"] // heads
    return ModelConfig(
        family=kind, n_layers=n_layers, d_model=c["hidden_size"], n_heads=heads,
        n_kv_heads=c.get("num_key_value_heads") or heads, d_head=d_head, d_mlp=c["intermediate_size"],
        vocab_size=c["vocab_size"], n_ctx=c.get("max_position_embeddings", 8192), mlp=MlpKind.GEGLU,
        norm_eps=c.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=_scaling(glob),
        qk_norm=kind != "gemma2", tied_embeddings=c.get("tie_word_embeddings", True),
        sliding_window=c.get("sliding_window") or 0,
        local_layers=tuple(i for i, t in enumerate(types) if t == "sliding_attention"), rope_local_theta=local_theta,
        norm_offset=1.0, embed_scale=c["hidden_size"] ** 0.5, post_norms=True,
        attn_scale=(c.get("query_pre_attn_scalar") or d_head) ** -0.5,
        attn_softcap=c.get("attn_logit_softcapping") or 0.0, final_softcap=c.get("final_logit_softcapping") or 0.0,
        bos_token_id=c.get("bos_token_id"), eos_token_id=_first(c.get("eos_token_id")),
    )  # fmt: skip


def _first(x: int | list[int] | None) -> int | None:
    return x[0] if isinstance(x, list) else x


def config_to_hf(cfg: ModelConfig) -> dict:
    """The inverse of config_from_hf (GPT-2, Llama-family or Gemma text-model layout)."""
    if cfg.family in GEMMA_FAMILY:
        return _gemma_config_to_hf(cfg)
    if cfg.family == "gpt2":
        return {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": cfg.n_layers,
            "n_embd": cfg.d_model, "n_head": cfg.n_heads, "n_inner": cfg.d_mlp, "vocab_size": cfg.vocab_size,
            "n_positions": cfg.n_ctx, "layer_norm_epsilon": cfg.norm_eps, "activation_function": "gelu_new",
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        }  # fmt: skip
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM"}[cfg.family]  # fmt: skip
    out = {
        "model_type": cfg.family, "architectures": [arch], "num_hidden_layers": cfg.n_layers,
        "hidden_size": cfg.d_model, "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.d_head, "intermediate_size": cfg.d_mlp, "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.n_ctx, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tied_embeddings, "hidden_act": "silu", "attention_bias": cfg.o_bias,
        "mlp_bias": cfg.mlp_bias, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "torch_dtype": "float32",
    }  # fmt: skip
    if cfg.rope_scaling.kind != "none":
        s = cfg.rope_scaling
        out["rope_scaling"] = {"rope_type": s.kind, "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                               "high_freq_factor": s.high_freq_factor,
                               "original_max_position_embeddings": s.original_max_position}  # fmt: skip
    return out


def _gemma_config_to_hf(cfg: ModelConfig) -> dict:
    kind = "gemma2" if cfg.family == "gemma2" else "gemma3_text"  # a multimodal model is saved as its text model
    s = cfg.rope_scaling
    glob = {"rope_type": "default" if s.kind == "none" else s.kind, "rope_theta": cfg.rope_theta}
    if s.kind != "none":
        glob |= {"factor": s.factor, "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                 "original_max_position_embeddings": s.original_max_position}  # fmt: skip
    rope = glob if kind == "gemma2" else {
        "full_attention": glob, "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local_theta}}
    local = set(range(cfg.n_layers) if cfg.local_layers is None else cfg.local_layers)
    return {
        "model_type": kind, "architectures": ["Gemma2ForCausalLM" if kind == "gemma2" else "Gemma3ForCausalLM"],
        "num_hidden_layers": cfg.n_layers, "hidden_size": cfg.d_model, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.d_head, "intermediate_size": cfg.d_mlp,
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.n_ctx, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tied_embeddings, "hidden_activation": "gelu_pytorch_tanh",
        "sliding_window": cfg.sliding_window or None, "rope_parameters": rope,
        "layer_types": ["sliding_attention" if i in local else "full_attention" for i in range(cfg.n_layers)],
        "query_pre_attn_scalar": round(cfg.attn_scale**-2), "attn_logit_softcapping": cfg.attn_softcap or None,
        "final_logit_softcapping": cfg.final_softcap or None, "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id, "torch_dtype": "float32",
    }  # fmt: skip


def _llama_names(cfg: ModelConfig, prefix: str = "model.") -> dict[str, str]:
    """Our name -> HF name for the Llama and Gemma families (prefix: where the decoder's weights live)."""
    names = {"embed.weight": prefix + "embed_tokens.weight", "ln_f.weight": prefix + "norm.weight"}
    if not cfg.tied_embeddings:
        names["unembed.weight"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        o, t = f"blocks.{i}.", f"{prefix}layers.{i}."
        names[o + "ln1.weight"] = t + "input_layernorm.weight"
        if cfg.post_norms:  # Gemma's sandwich norms
            names[o + "ln1_post.weight"] = t + "post_attention_layernorm.weight"
            names[o + "ln2.weight"] = t + "pre_feedforward_layernorm.weight"
            names[o + "ln2_post.weight"] = t + "post_feedforward_layernorm.weight"
        else:
            names[o + "ln2.weight"] = t + "post_attention_layernorm.weight"
        for ours, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
            names[f"{o}attn.{ours}.weight"] = f"{t}self_attn.{hf}.weight"
            if (cfg.qkv_bias and ours != "o") or (cfg.o_bias and ours == "o"):
                names[f"{o}attn.{ours}.bias"] = f"{t}self_attn.{hf}.bias"
        if cfg.qk_norm:
            names[o + "attn.q_norm.weight"] = t + "self_attn.q_norm.weight"
            names[o + "attn.k_norm.weight"] = t + "self_attn.k_norm.weight"
        for ours, hf in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            names[f"{o}mlp.{ours}.weight"] = f"{t}mlp.{hf}.weight"
            if cfg.mlp_bias:
                names[f"{o}mlp.{ours}.bias"] = f"{t}mlp.{hf}.bias"
    return names


def _gpt2_from_hf(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {"embed.weight": sd["wte.weight"], "pos_embed.weight": sd["wpe.weight"],
           "ln_f.weight": sd["ln_f.weight"], "ln_f.bias": sd["ln_f.bias"]}  # fmt: skip
    for i in range(cfg.n_layers):
        t, o = f"h.{i}.", f"blocks.{i}."
        for n in ("weight", "bias"):
            out[f"{o}ln1.{n}"], out[f"{o}ln2.{n}"] = sd[f"{t}ln_1.{n}"], sd[f"{t}ln_2.{n}"]
        qkv_w, qkv_b = sd[t + "attn.c_attn.weight"].T, sd[t + "attn.c_attn.bias"]  # Conv1D stores [in, out]
        for j, name in enumerate("qkv"):
            out[f"{o}attn.{name}.weight"] = qkv_w.chunk(3, 0)[j]
            out[f"{o}attn.{name}.bias"] = qkv_b.chunk(3, 0)[j]
        out[o + "attn.o.weight"], out[o + "attn.o.bias"] = sd[t + "attn.c_proj.weight"].T, sd[t + "attn.c_proj.bias"]
        out[o + "mlp.up.weight"], out[o + "mlp.up.bias"] = sd[t + "mlp.c_fc.weight"].T, sd[t + "mlp.c_fc.bias"]
        out[o + "mlp.down.weight"], out[o + "mlp.down.bias"] = sd[t + "mlp.c_proj.weight"].T, sd[t + "mlp.c_proj.bias"]
    return out


def _gpt2_to_hf(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"transformer.wte.weight": sd["embed.weight"], "transformer.wpe.weight": sd["pos_embed.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"]}  # fmt: skip
    for i in range(cfg.n_layers):
        t, o = f"transformer.h.{i}.", f"blocks.{i}."
        for n in ("weight", "bias"):
            out[f"{t}ln_1.{n}"], out[f"{t}ln_2.{n}"] = sd[f"{o}ln1.{n}"], sd[f"{o}ln2.{n}"]
        out[t + "attn.c_attn.weight"] = torch.cat([sd[f"{o}attn.{n}.weight"] for n in "qkv"], 0).T
        out[t + "attn.c_attn.bias"] = torch.cat([sd[f"{o}attn.{n}.bias"] for n in "qkv"], 0)
        for hf, ours in (("attn.c_proj", "attn.o"), ("mlp.c_fc", "mlp.up"), ("mlp.c_proj", "mlp.down")):
            out[f"{t}{hf}.weight"], out[f"{t}{hf}.bias"] = sd[f"{o}{ours}.weight"].T, sd[f"{o}{ours}.bias"]
    return out


def read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of the shards named by its index."""
    index = path / "model.safetensors.index.json"
    where = path  # the file being read, for the message
    try:
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (path / "model.safetensors").exists():
            files = ["model.safetensors"]
        else:
            raise ModelLoadError(f"{path} has no model.safetensors or model.safetensors.index.json")
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            where = path / f
            sd |= load_file(str(where))
        return sd
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot read weights in {where}: {str(e).splitlines()[0]}") from None


def state_from_hf(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF tensors -> our state dict (stored dtype kept; build_model converts tensor by tensor)."""
    try:
        if cfg.family == "gpt2":
            out = _gpt2_from_hf(cfg, sd)
        else:
            out = {ours: sd[hf] for ours, hf in _llama_names(cfg, _decoder_prefix(sd)).items()}
    except KeyError as e:
        raise ModelLoadError(f"weights lack the tensor {e}") from None
    return out


def _decoder_prefix(sd: dict[str, torch.Tensor]) -> str:
    """`model.` for text checkpoints; Gemma-3 multimodal ones nest the decoder (`model.language_model.` in
    transformers 5, `language_model.model.` before)."""
    for k in sd:
        if k.endswith("embed_tokens.weight") and "vision" not in k:
            return k.removesuffix("embed_tokens.weight")
    return "model."


def state_to_hf(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if cfg.family == "gpt2":
        return _gpt2_to_hf(cfg, sd)
    return {hf: sd[ours] for ours, hf in _llama_names(cfg).items()}


def save_hf(cfg: ModelConfig, state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype = torch.float32) -> None:
    """Write config.json + model.safetensors (atomically) in HF layout."""
    tensors = {k: v.detach().to(dtype).contiguous().clone() for k, v in state_to_hf(cfg, state).items()}
    atomic_save_safetensors(tensors, path / "model.safetensors", metadata={"format": "pt"})
    hf = config_to_hf(cfg) | {"torch_dtype": str(dtype).removeprefix("torch.")}
    atomic_write_text(path / "config.json", json.dumps(hf, indent=2))


