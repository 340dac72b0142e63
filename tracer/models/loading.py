"""Load a model from a local HF directory or a .gguf file, fully offline.

1. Resolve: a directory (config.json + safetensors), a `.gguf` file, or a Hugging Face name (`google/gemma-2-2b`)
   found in the local Hugging Face cache (tracer.hub, never a download); anything else is a clear error.
2. Build: ModelConfig -> Transformer on the meta device, then the state dict's tensors are assigned (strict: a
   missing tensor is an error), so weights sit in memory once, not twice.
3. Tokenizer: from the directory's files or the GGUF metadata.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from tracer.errors import ModelLoadError
from tracer.finite import check_finite
from tracer.hub import resolve_model
from tracer.models.config import ModelConfig
from tracer.models.hf import config_from_hf, read_safetensors_dir, state_from_hf
from tracer.models.tokenizer import Tokenizer, load_tokenizer
from tracer.models.transformer import Transformer

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "default_model"


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer | None
    name: str  # directory or file name, for graph metadata
    content_hash: str  # sha256 of the weight files (first 16 hex digits)

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg


def file_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def _check_layer_count(cfg: ModelConfig, hf_state: dict[str, torch.Tensor], path: Path) -> None:
    """Before anything is sized from the config: its layer count must be the weights' (a config claiming 10⁹
    layers would otherwise build 10⁹ layers' names and modules)."""
    found = {int(m.group(1)) for k in hf_state if (m := re.search(r"\.(?:layers|h)\.(\d+)\.", k))}
    if found and cfg.n_layers != len(found):
        raise ModelLoadError(f"{path / 'config.json'} says {cfg.n_layers} layers, the weights have {len(found)}")


class _SkipNormalInit(TorchFunctionMode):
    """Inside `torch.device("meta")`: `normal_` (nn.Embedding's init) on a meta tensor is a no-op; torch would
    route it through its reference decomposition, whose first call imports torch._dynamo (~1 s, for nothing)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.nn.init.normal_, torch.Tensor.normal_):
            tensor = args[0] if args else kwargs["tensor"]
            if tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def build_model(
    cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32, source: Path | None = None
) -> Transformer:
    """The model of `cfg` holding `state` (its errors name `source`, the weights' file or folder)."""
    of = f" of {source}" if source is not None else ""
    check_finite(state, f"model weights{of}", ModelLoadError)  # a NaN weight makes every feature active
    # no random init of weights that are replaced at once (seconds and GBs at 2B)
    with torch.device("meta"), _SkipNormalInit():
        model = Transformer(cfg)
    for k in list(state):  # one tensor at a time, so the checkpoint's dtype and ours are never both whole
        state[k] = state[k].to(dtype)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # shapes that disagree with the config (e.g. its hidden_size)
        why = " ".join(str(e).split("\n\t")[1:2]).strip() or str(e).splitlines()[0]
        raise ModelLoadError(f"weights do not fit the config{of}: {why}") from None
    missing = [m for m in missing if not (cfg.tied_embeddings and m == "unembed.weight")]
    if missing or unexpected:
        raise ModelLoadError(f"weights do not fit the config{of}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if cfg.tied_embeddings:
        model.unembed.weight = model.embed.weight
    model.reset_buffers()
    model.requires_grad_(False)
    return model.eval()


def load_model(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A local HF-layout directory, a .gguf file or a cached HF name (default: the bundled default model)."""
    path = resolve_model(path) or DEFAULT_MODEL
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist")
    if path.is_file() and path.suffix == ".gguf":
        from tracer.models.gguf import load_gguf  # the gguf package is only needed for .gguf files

        return load_gguf(path, dtype)
    if not path.is_dir():
        raise ModelLoadError(f"{path} is neither a model directory nor a .gguf file")
    try:
        hf = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path} has no config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path / 'config.json'} is not valid JSON: {e}") from None
    cfg = config_from_hf(hf)
    hf_state = read_safetensors_dir(path)
    _check_layer_count(cfg, hf_state, path)
    model = build_model(cfg, state_from_hf(cfg, hf_state), dtype, path)
    weights = sorted(path.glob("*.safetensors"))
    name = path.name if path.parent.name != "snapshots" else path.parent.parent.name.removeprefix("models--").replace(
        "--", "/")  # a cached HF snapshot is named by its repository  # fmt: skip
    return LoadedModel(model, load_tokenizer(path, cfg.bos_token_id), name, file_hash(weights))
