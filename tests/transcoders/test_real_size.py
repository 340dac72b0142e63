"""Training at real-model size: buffers stored in fp16 and sized to the memory, activation caches keyed by model and
settings, explicit resume/interrupt messages, a warning when --tokens exceeds the corpus."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_model, tiny_config
from tests.transcoders.test_cli import model_dir  # noqa: F401  (fixture: tiny model, tokenizer, corpus)
from tracer.cli import main
from tracer.errors import ConfigError
from tracer.models import HookPoint
from transcoders import data as data_mod
from transcoders import train as train_mod
from transcoders.data import ActivationSource, buffer_bytes, fit_buffer_tokens, harvest, sequences
from transcoders.train import TrainConfig, train

SMALL = dict(n_features=16, tokens=4 * 128, batch_tokens=128, seq_len=17, buffer_tokens=256, checkpoint_every=2,
             warmup_steps=1)  # fmt: skip


@pytest.fixture
def setup():
    model = random_model(tiny_config("llama"), dtype=torch.float32)
    stream = torch.randint(3, 50, (3000,), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    return model, stream


def test_harvest_stores_fp16_equal_to_fp32_rounded(setup):
    model, stream = setup
    toks = sequences(stream, 0, 5, 17, model.cfg.bos_token_id)
    full, half = harvest(model, toks, HookPoint.MLP_IN), harvest(model, toks, HookPoint.MLP_IN, dtype=torch.float16)
    assert half.x.dtype == torch.float16 and half.x.shape == (5 * 16, 3, 16)
    assert torch.equal(half.x, full.x.half()) and torch.equal(half.y, full.y.half())


def test_buffer_sizing(monkeypatch, setup):
    model, _ = setup
    assert buffer_bytes(model, 1000) == 2 * 1000 * 3 * 16 * 2
    monkeypatch.setattr(data_mod, "available_bytes", lambda: 10 * buffer_bytes(model, 1024))
    # 40% of 10 buffers of 1024 = 4 buffer-equivalents: with one kept + one shuffling, 2048 tokens fit, 4096 not
    assert fit_buffer_tokens(model, 1 << 18, 128) == 2048
    assert fit_buffer_tokens(model, 1 << 18, 4096) == 4096  # never below a batch


def test_cache_is_keyed_by_model_and_settings(tmp_path, setup):
    model, stream = setup
    other = random_model(tiny_config("llama"), seed=5, dtype=torch.float32)
    a = ActivationSource(model, stream, HookPoint.MLP_IN, 17, 256, cache_dir=tmp_path)
    a.buffer(0)
    b = ActivationSource(other, stream, HookPoint.MLP_IN, 17, 256, cache_dir=tmp_path)
    c = ActivationSource(model, stream, HookPoint.RESID_MID, 17, 256, cache_dir=tmp_path)
    d = ActivationSource(model, stream, HookPoint.MLP_IN, 17, 256, cache_dir=tmp_path)
    assert a.cache_dir is not None and len({a.cache_dir, b.cache_dir, c.cache_dir}) == 3 and d.cache_dir == a.cache_dir
    fresh = b.buffer(0)  # another model's shards are never read back
    expect = harvest(other, sequences(stream, 0, b.seqs_per_buffer, 17, 1), HookPoint.MLP_IN, dtype=torch.float16)
    assert torch.equal(fresh.x.sort(0).values, expect.x.sort(0).values)
    assert torch.equal(d.buffer(0).x, a.buffer(0).x)  # same model and settings: the shard is reused


def test_resume_and_interrupt_messages(tmp_path, setup, capsys, monkeypatch):
    model, stream = setup
    cfg = TrainConfig.model_validate(SMALL)
    assert train(model, stream, cfg, tmp_path, stop_after=2, progress=True) is None
    assert "training 4 steps" in capsys.readouterr().err
    real = train_mod.loss_fn
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "loss_fn", flaky)
    with pytest.raises(ConfigError, match=r"interrupted at step 3 of 4; .*holds step 2: run the same command"):
        train(model, stream, cfg, tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "resuming from" in err and "at step 2 of 4" in err
    monkeypatch.setattr(train_mod, "loss_fn", real)
    assert train(model, stream, cfg, tmp_path, progress=True) is not None
    assert "resuming from" in capsys.readouterr().err


def test_tokens_beyond_corpus_warn_and_buffer_note(model_dir, capsys):  # noqa: F811
    d = model_dir
    args = ["transcoders", "train", "--model", str(d / "model"), "--features", "8", "--tokens", "20000", "--corpus",
            str(d / "corpus"), "--out", str(d / "tc"), "--batch-tokens", "128", "--seq-len", "17", "--no-progress",
            "--buffer-tokens", "256"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning: corpus" in err and "6,000 tokens" in err and "20,000" in err
    assert main([*args[:-2], "--buffer-tokens", str(10**12)]) == 2  # cannot fit: one line, before harvesting
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --buffer-tokens") and "GiB" in err and "\n" not in err
