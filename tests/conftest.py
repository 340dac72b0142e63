"""Shared fixtures: tiny seeded models built in code (never downloaded)."""

from __future__ import annotations

import os

import pytest
import torch

from tracer.models import MlpKind, ModelConfig, NormKind, PosKind, Transformer

torch.set_num_threads(int(os.environ.get("TRACER_TEST_THREADS", "1")))


def _hide_hub_kernels() -> None:
    """transformers >= 5.25 imports the `kernels` distribution (its Hub-kernel loader) when installed, and our own
    `kernels` package shadows it on sys.path: tell transformers it is absent (the tests use its eager torch code)."""
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
    try:
        import transformers.utils as tu
        import transformers.utils.import_utils as iu
    except ImportError:
        return
    iu.is_kernels_available = tu.is_kernels_available = lambda *a, **k: False  # type: ignore[assignment]


_hide_hub_kernels()


def tiny_config(style: str, **kw) -> ModelConfig:
    """A 3-layer model of the GPT-2, Llama, Gemma-2 or Gemma-3 style, small enough for float64 perturbation tests
    (Gemma: short windows, small soft-caps and a query scalar != d_head so that every detail is exercised)."""
    gemma = dict(n_layers=3, d_model=16, n_heads=4, n_kv_heads=2, d_head=8, d_mlp=24, vocab_size=50, n_ctx=32,
                 mlp=MlpKind.GEGLU, norm_offset=1.0, embed_scale=4.0, post_norms=True, sliding_window=3,
                 attn_scale=10**-0.5, tied_embeddings=True, bos_token_id=2, eos_token_id=1)  # fmt: skip
    if style == "gemma2":
        base = gemma | dict(family="gemma2", local_layers=(0, 2), attn_softcap=1.5, final_softcap=2.0)
    elif style == "gemma3":
        base = gemma | dict(family="gemma3_text", local_layers=(0, 1), qk_norm=True, rope_theta=1000.0,
                            rope_local_theta=37.0)  # fmt: skip
    elif style == "gpt2":
        base = dict(family="gpt2", n_layers=3, d_model=16, n_heads=2, d_mlp=32, vocab_size=50, n_ctx=32,
                    norm=NormKind.LAYERNORM, mlp=MlpKind.GELU, pos=PosKind.LEARNED, qkv_bias=True, o_bias=True,
                    mlp_bias=True, bos_token_id=0, eos_token_id=0)  # fmt: skip
    else:
        base = dict(family="llama", n_layers=3, d_model=16, n_heads=4, n_kv_heads=2, d_mlp=24, vocab_size=50,
                    n_ctx=32, tied_embeddings=False, bos_token_id=1, eos_token_id=2)  # fmt: skip
    return ModelConfig(**(base | kw))  # type: ignore[arg-type]


def random_model(cfg: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float64) -> Transformer:
    """Random weights with norm weights/biases away from their defaults, so misplaced terms show."""
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.3)
    model.requires_grad_(False)
    return model.to(dtype).eval()


@pytest.fixture(params=["gpt2", "llama"])
def tiny_model(request) -> Transformer:
    return random_model(tiny_config(request.param))


def hf_snapshot(hub, repo: str, commit: str = "a" * 40):
    """A fake Hugging Face cache entry under `hub`: models--org--name/refs/main -> snapshots/<commit>/ (returned)."""
    root = hub / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


@pytest.fixture
def served(monkeypatch) -> dict:
    """What `tracer view` would serve, never served: the Env handed to the callbacks ("env") and the arguments of
    Dash.run ("run")."""
    from dash import Dash

    from viewer import callbacks

    got: dict = {}
    real = callbacks.register

    def register(app, env) -> None:
        got["env"] = env
        real(app, env)

    monkeypatch.setattr(callbacks, "register", register)
    monkeypatch.setattr(Dash, "run", lambda self, **kw: got.setdefault("run", kw))
    return got
