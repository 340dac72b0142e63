"""Load a llama.cpp `.gguf` file offline: config, dequantised weights and tokenizer from the file alone.

1. Read: GGUFReader memory-maps the header, metadata and tensor index; a parse failure is a ModelLoadError.
2. Config: the `{arch}.*` metadata (block_count, embedding_length, ...) -> ModelConfig; supported archs are
   GgufArch (llama covers SmolLM2 and Llama 3; Llama 3.1's rope_freqs and SentencePiece vocabularies are refused).
3. Weights: dequantise every tensor to float32 (gguf.quants), rename llama.cpp names to ours (through gguf's
   own HF -> GGUF name table) and undo the Q/K row permutation that llama.cpp's converter applies to the llama
   arch (interleaved rotary pairs back to the rotate-half order of HF and our runtime). Without `output.weight`
   the embeddings are tied.
4. Tokenizer: byte-level BPE from tokenizer.ggml.tokens + merges, split the way `tokenizer.ggml.pre` names
   (no prefix space), control tokens kept whole as special tokens; BOS only when the file asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import MODEL_ARCH, GGUFReader, TokenType, get_tensor_name_map
from gguf.quants import dequantize
from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

from tracer.errors import ModelLoadError
from tracer.models.config import ModelConfig, RopeScaling
from tracer.models.hf import _llama_names
from tracer.models.loading import LoadedModel, build_model, file_hash
from tracer.models.tokenizer import Tokenizer


class GgufArch(StrEnum):
    """`general.architecture` values we load; the value is also our ModelConfig family."""

    LLAMA = "llama"
    QWEN2 = "qwen2"
    QWEN3 = "qwen3"


PERMUTED_QK = {GgufArch.LLAMA}  # llama.cpp permutes Q/K rows only for archs with GPT-J style (interleaved) rope

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip


@dataclass(frozen=True)
class PreTokenizerSpec:
    """How llama.cpp (llama-vocab.cpp) splits text before BPE for one `tokenizer.ggml.pre` value."""

    split: str | None = None  # regex for the split; None = byte-level BPE's own GPT-2 regex
    single_digits: bool = False  # every digit its own piece before the regex (SmolLM, StarCoder)
    ignore_merges: bool = False  # whole-vocabulary words skip the merges (Llama 3)

    def build(self) -> pre_tokenizers.PreTokenizer:
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=self.split is None)
        steps = [pre_tokenizers.Split(Regex(self.split), behavior="isolated")] if self.split else []
        steps = ([pre_tokenizers.Digits(individual_digits=True)] if self.single_digits else []) + steps
        return pre_tokenizers.Sequence([*steps, byte_level])


_SMOLLM = PreTokenizerSpec(single_digits=True)
_LLAMA3 = PreTokenizerSpec(split=_LLAMA3_SPLIT, ignore_merges=True)
PRE_TOKENIZERS = {
    "default": PreTokenizerSpec(), "gpt2": PreTokenizerSpec(), "smollm": _SMOLLM, "starcoder": _SMOLLM,
    "refact": _SMOLLM, "codeshell": _SMOLLM, "llama-bpe": _LLAMA3, "llama3": _LLAMA3,
    "qwen2": PreTokenizerSpec(split=_QWEN2_SPLIT),
}  # fmt: skip


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows [out, ...] of a Q or K weight/bias from llama.cpp's interleaved order to rotate-half order.

    n_heads is the number of heads of that projection (n_kv_heads for K).
    """
    out = w.shape[0]
    return w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    # 1. Read
    try:
        reader = GGUFReader(path)
        meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        tensors = {t.name: _dequantized(t) for t in reader.tensors}
    except (ValueError, KeyError, IndexError, OSError, TypeError, UnicodeDecodeError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"cannot read GGUF file {path}: {why}") from None
    # 2. Config
    cfg = config_from_gguf(meta, tensors)
    # 3. Weights
    state = state_from_gguf(cfg, tensors)
    model = build_model(cfg, state, dtype, path)
    # 4. Tokenizer
    return LoadedModel(model, tokenizer_from_gguf(meta), path.name, file_hash([path]))


def _dequantized(t: Any) -> torch.Tensor:
    """One tensor as float32 in PyTorch order (GGUF lists dimensions innermost first)."""
    arr = dequantize(t.data, t.tensor_type).reshape(tuple(int(n) for n in reversed(t.shape)))
    return torch.from_numpy(np.require(arr, np.float32, ["C", "W"]))  # copy only when read-only (memmap)


def config_from_gguf(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ModelConfig:
    """ModelConfig from `{arch}.*` metadata; sizes the metadata omits are read off the tensors."""
    name, supported = meta.get("general.architecture"), [a.value for a in GgufArch]
    if name not in supported:
        raise ModelLoadError(f"unsupported GGUF architecture {name!r}; supported: {', '.join(supported)}")
    arch = GgufArch(name)
    if "token_embd.weight" not in tensors:
        raise ModelLoadError("GGUF file lacks the tensor token_embd.weight")

    def get(key: str, default: Any = None) -> Any:
        v = meta.get(f"{arch.value}.{key}", default)
        if v is None:
            raise ModelLoadError(f"GGUF metadata lacks {arch.value}.{key}")
        return float(str(np.float32(v))) if isinstance(v, float) else v  # float32's shortest decimal: 1e-05

    rope = get("rope.scaling.type", "none")
    if rope not in ("none", "linear"):
        raise ModelLoadError(f"unsupported GGUF rope scaling {rope!r}; supported: none, linear")
    n_heads, d_model = get("attention.head_count"), get("embedding_length")
    return ModelConfig(
        family=arch.value, n_layers=get("block_count"), d_model=d_model, n_heads=n_heads,
        n_kv_heads=get("attention.head_count_kv", n_heads), d_head=get("attention.key_length", d_model // n_heads),
        d_mlp=get("feed_forward_length"), vocab_size=tensors["token_embd.weight"].shape[0],
        n_ctx=get("context_length"), norm_eps=get("attention.layer_norm_rms_epsilon"),
        rope_theta=get("rope.freq_base", 10000.0),
        rope_scaling=RopeScaling(kind=rope, factor=get("rope.scaling.factor", 1.0)),
        qkv_bias="blk.0.attn_q.bias" in tensors, o_bias="blk.0.attn_output.bias" in tensors,
        mlp_bias="blk.0.ffn_up.bias" in tensors, qk_norm=arch == GgufArch.QWEN3,
        tied_embeddings="output.weight" not in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
    )  # fmt: skip


def state_from_gguf(cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """llama.cpp tensors -> our state dict; tensors we cannot place (e.g. rope_freqs) are an error."""
    tmap = get_tensor_name_map(MODEL_ARCH[GgufArch(cfg.family).name], cfg.n_layers)  # llama.cpp's HF -> GGUF table
    names: dict[str, str] = {}
    for ours, hf in _llama_names(cfg).items():
        name = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"gguf has no name for {hf}"  # every Llama-family HF name is in its table
        names[ours] = name
    missing = sorted(set(names.values()) - tensors.keys())
    unused = sorted(tensors.keys() - set(names.values()))
    if missing or unused:
        raise ModelLoadError(f"GGUF tensors do not fit the {cfg.family} config: missing {missing[:3]}, "
                             f"unsupported {unused[:3]}")  # fmt: skip
    state = {ours: tensors[g] for ours, g in names.items()}
    if GgufArch(cfg.family) in PERMUTED_QK:
        for key, w in state.items():
            if ".attn.q." in key or ".attn.k." in key:
                state[key] = unpermute_qk(w, cfg.n_heads if ".attn.q." in key else cfg.n_kv_heads)
    return state


def tokenizer_from_gguf(meta: dict[str, Any]) -> Tokenizer | None:
    """Byte-level BPE from the metadata (None when the file carries no vocabulary)."""
    if "tokenizer.ggml.tokens" not in meta:
        return None
    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise ModelLoadError(f"unsupported GGUF tokenizer {kind!r}; supported: gpt2 (byte-level BPE)")
    spec = PRE_TOKENIZERS.get(pre)
    if spec is None:
        raise ModelLoadError(f"unsupported GGUF pre-tokenizer {pre!r}; supported: {', '.join(PRE_TOKENIZERS)}")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    try:
        inner = HFTokenizer(BPE({t: i for i, t in enumerate(tokens)}, merges, ignore_merges=spec.ignore_merges))
    except Exception as e:  # the tokenizers library raises plain Exception on bad vocabularies
        raise ModelLoadError(f"cannot build the GGUF tokenizer: {str(e).splitlines()[0]}") from None
    inner.pre_tokenizer = spec.build()  # type: ignore[assignment]
    inner.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    types = meta.get("tokenizer.ggml.token_type", [])
    inner.add_special_tokens([AddedToken(t, special=True, normalized=False)
                              for t, k in zip(tokens, types, strict=False) if k == TokenType.CONTROL])  # fmt: skip
    inner.add_tokens([AddedToken(t, normalized=False)
                      for t, k in zip(tokens, types, strict=False) if k == TokenType.USER_DEFINED])  # fmt: skip
    bos = meta.get("tokenizer.ggml.bos_token_id") if meta.get("tokenizer.ggml.add_bos_token", False) else None
    return Tokenizer(inner, bos)
