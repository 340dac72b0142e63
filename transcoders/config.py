"""Transcoder configuration: what a transcoder set is, validated once on creation.

1. Kinds: CLT (a feature of layer l writes to every layer l..L-1) or PLT (writes to layer l only).
2. Hooks: the encoder reads `input_hook` (normalised MLP input or pre-norm residual) at its layer; the decoders
   write `output_hook` (MLP output incl. bias).
3. The config is stored as `config.json` beside the weights (our format) and checked against the model on load.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tracer.models import HookPoint

SCHEMA_VERSION = 1


class TranscoderKind(StrEnum):
    CLT = "clt"  # cross-layer: decoders to every later layer
    PLT = "plt"  # per-layer: one decoder to its own layer


class ActivationKind(StrEnum):
    JUMPRELU = "jumprelu"  # a = pre * (pre > threshold)
    RELU = "relu"
    TOPK = "topk"  # per layer, keep the k largest positive pre-activations


class DType(StrEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"

    @property
    def torch(self) -> torch.dtype:
        return getattr(torch, self.value)

    @classmethod
    def of(cls, dtype: torch.dtype) -> DType:
        return cls(str(dtype).removeprefix("torch."))


INPUT_HOOKS = (HookPoint.MLP_IN, HookPoint.LN2_NORMALIZED, HookPoint.RESID_MID)
OUTPUT_HOOKS = (HookPoint.MLP_OUT,)


class TranscoderConfig(BaseModel):
    """One set of transcoders covering every layer of one model."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    schema_version: int = Field(default=SCHEMA_VERSION, description="on-disk format version of config.json")
    kind: TranscoderKind = Field(description="clt (cross-layer) or plt (per-layer)")
    n_layers: int = Field(gt=0, description="layers of the model (one encoder per layer)")
    d_model: int = Field(gt=0, description="residual width of the model")
    n_features: int = Field(gt=0, description="features per layer")
    activation: ActivationKind = Field(default=ActivationKind.JUMPRELU, description="feature nonlinearity")
    topk_k: int = Field(default=0, ge=0, description="TopK: active features per layer and token (0 unless topk)")
    input_hook: HookPoint = Field(default=HookPoint.MLP_IN, description="hook the encoder of layer l reads")
    output_hook: HookPoint = Field(default=HookPoint.MLP_OUT, description="hook the decoders write (reconstruct)")
    skip: bool = Field(default=False, description="linear skip connection W_skip from input to output per layer")
    model_name: str = Field(default="", description="name of the model it was trained on")
    model_hash: str = Field(default="", description="content hash of that model's weights ('' = unknown)")
    dtype: DType = Field(default=DType.FLOAT32, description="dtype of the stored weights")
    jumprelu_bandwidth: float = Field(default=0.1, gt=0, description="rectangle-kernel width of the threshold STE")
    layers: tuple[int, ...] | None = Field(default=None, description=(
        "layers that have transcoders, sorted (None = all); the others' weights are zero: no features there, "
        "their MLP output is all error"))  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> TranscoderConfig:
        if self.input_hook not in INPUT_HOOKS:
            raise ValueError(f"input_hook must be one of {[h.value for h in INPUT_HOOKS]}, not {self.input_hook.value}")
        if self.output_hook not in OUTPUT_HOOKS:
            raise ValueError(f"output_hook must be {HookPoint.MLP_OUT.value}, not {self.output_hook.value}")
        if (self.activation == ActivationKind.TOPK) != (self.topk_k > 0):
            raise ValueError("topk_k must be > 0 exactly when activation is topk")
        if self.topk_k > self.n_features:
            raise ValueError(f"topk_k {self.topk_k} exceeds n_features {self.n_features}")
        if self.layers is not None and (not self.layers or list(self.layers) != sorted(set(self.layers))
                                        or not 0 <= self.layers[0] <= self.layers[-1] < self.n_layers):  # fmt: skip
            raise ValueError(f"layers must be sorted, unique and in [0, {self.n_layers}), not {list(self.layers)}")
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {self.schema_version} (this version reads {SCHEMA_VERSION})")
        return self

    def n_out(self, layer: int) -> int:
        """Output layers written by a feature of `layer`."""
        return self.n_layers - layer if self.kind == TranscoderKind.CLT else 1
