"""Model runtime: one transformer implementation with named hook points, loaded offline."""

from tracer.models.config import MlpKind, ModelConfig, NormKind, PosKind, RopeScaling
from tracer.models.hf import SUPPORTED, save_hf
from tracer.models.hooks import HookPoint, Site, all_sites
from tracer.models.loading import DEFAULT_MODEL, LoadedModel, build_model, load_model
from tracer.models.tokenizer import Tokenizer
from tracer.models.transformer import Transformer

__all__ = [
    "DEFAULT_MODEL", "SUPPORTED", "HookPoint", "LoadedModel", "MlpKind", "ModelConfig", "NormKind", "PosKind",
    "RopeScaling", "Site", "Tokenizer", "Transformer", "all_sites", "build_model", "load_model", "save_hf",
]  # fmt: skip
