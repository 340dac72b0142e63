"""`transcoders train --model-dtype / --device` (the harvest's dtype and device) and `transcoders eval`'s warning
when the corpus is shorter than the tokens the evaluation reads."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tests.transcoders.conftest import random_transcoder
from tests.transcoders.test_cli import WORDS, model_dir  # noqa: F401  (fixture: tiny model, tokenizer, corpus)
from tracer.cli import main
from tracer.models import HookPoint, load_model
from transcoders import load_transcoders, save_transcoders
from transcoders import train as train_mod
from transcoders.data import harvest, sequences

TRAIN = ["--features", "8", "--tokens", "256", "--batch-tokens", "128", "--seq-len", "17", "--buffer-tokens", "256",
         "--no-progress"]  # fmt: skip


def _train_args(d, *extra: str) -> list[str]:
    return ["transcoders", "train", "--model", str(d / "model"), "--corpus", str(d / "corpus"), "--out",
            str(d / "tc"), *TRAIN, *extra]  # fmt: skip


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_model_dtype_bf16_harvests_close_to_fp32(model_dir, monkeypatch):  # noqa: F811
    """--model-dtype bf16 hands the trainer a bf16 model (its harvest runs in bf16), the saved weights' --dtype
    staying fp32; its activations are within bf16 rounding of the fp32 model's, and not equal to them."""
    got: list = []

    def fake_train(model, stream, cfg, *a, **k):
        got.append((model, stream, cfg))
        return SimpleNamespace(steps=0, tokens_per_s=0.0, final={"nmse": 0.0, "l0": 0.0, "dead": 0.0})

    monkeypatch.setattr(train_mod, "train", fake_train)
    d = model_dir
    assert main(_train_args(d)) == 0
    assert main(_train_args(d, "--model-dtype", "bf16", "--device", "cpu")) == 0
    (m32, s32, c32), (m16, s16, c16) = got
    assert {p.dtype for p in m32.parameters()} == {torch.float32}
    assert {p.dtype for p in m16.parameters()} == {torch.bfloat16}
    assert c32.dtype == c16.dtype == "float32" and torch.equal(s32, s16)
    toks = sequences(s32, 0, 8, 17, m32.cfg.bos_token_id)
    a = harvest(m32, toks, HookPoint.MLP_IN, dtype=torch.float32)
    b = harvest(m16, toks, HookPoint.MLP_IN, dtype=torch.float32)
    assert a.x.shape == b.x.shape == (8 * 16, 3, 16)
    for layer in range(3):  # bf16 rounds to 2^-9 relative per operation; measured 1.1-3.3 % over these 3 layers
        for x16, x32 in ((b.x, a.x), (b.y, a.y)):
            assert 1e-3 < _rel(x16[:, layer], x32[:, layer]) < 0.05
    ref = harvest(load_model(d / "model", dtype=torch.bfloat16).model, toks, HookPoint.MLP_IN, dtype=torch.float32)
    assert torch.equal(b.x, ref.x) and torch.equal(b.y, ref.y)  # exactly the bf16 model's forward pass


def test_model_dtype_bf16_trains_fp32_weights_from_its_own_cache(model_dir):  # noqa: F811
    """End to end: a bf16 harvest (stored in fp16) trains fp32 transcoder weights, and its activation cache is not
    the fp32 harvest's (their values differ by the bf16 rounding): a rerun in fp32 reuses the fp32 one."""
    d, cache = model_dir, model_dir / "acts"
    small = ["--kind", "plt", "--tokens", "128", "--buffer-tokens", "128", "--cache-dir", str(cache)]
    assert main(_train_args(d, *small)) == 0
    assert main([*_train_args(d, *small, "--model-dtype", "bf16"), "--out", str(d / "tc16")]) == 0
    keys = sorted(str(json.loads(p.read_text()).get("model_dtype")) for p in cache.glob("*/key.json"))
    assert keys == ["None", "torch.bfloat16"]  # two caches: an fp32 harvest's key has no model_dtype (unchanged)
    tc = load_transcoders(d / "tc16")
    assert tc.W_enc.dtype == torch.float32 and torch.isfinite(tc.W_enc).all() and tc.W_enc.abs().sum() > 0
    assert not torch.equal(tc.W_enc, load_transcoders(d / "tc").W_enc)  # trained on other activations
    assert main([*_train_args(d, *small), "--out", str(d / "again")]) == 0
    assert len(list(cache.iterdir())) == 2 and torch.equal(load_transcoders(d / "again").W_enc,
                                                           load_transcoders(d / "tc").W_enc)  # fmt: skip


@pytest.mark.parametrize("device,available,count,msg", [
    ("cuda", False, 0, "--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)"),
    ("cuda:0", False, 0, "--device cuda:0: no CUDA device is available here (torch.cuda.is_available() is False)"),
    ("cuda:1", True, 1, "--device cuda:1: this machine has 1 CUDA device(s)"),
    ("gpu", False, 0, "--device 'gpu': expected cpu, cuda or cuda:N"),
])  # fmt: skip
def test_device_refused_in_one_line_before_loading(tmp_path, capsys, monkeypatch, device, available, count, msg):
    """Checked before the model is read: the model path here does not exist, and the error is the device's."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    code = main(["transcoders", "train", "--model", str(tmp_path / "no-model"), "--corpus", str(tmp_path / "none"),
                 "--out", str(tmp_path / "tc"), "--device", device])  # fmt: skip
    assert code == 2 and capsys.readouterr().err.strip() == f"error: {msg}"
    assert not (tmp_path / "tc").exists()


# ---- eval: the corpus is shorter than what the evaluation reads -----------------------------------------------

# --tokens 400 --ce-tokens 200 --seq-len 17: 25 statistics + 14 splice sequences of BOS + 16 tokens = 624 tokens
EVAL = ["--tokens", "400", "--ce-tokens", "200", "--seq-len", "17", "--json"]
READS = (25 + 14) * 16


@pytest.fixture
def eval_setup(model_dir):  # noqa: F811
    d = model_dir
    save_transcoders(random_transcoder(n_layers=3, d_model=16, n_features=12), d / "tc")
    g = torch.Generator().manual_seed(3)
    words = [WORDS[i] for i in torch.randint(0, len(WORDS), (3000,), generator=g)]
    for name, n in (("big", 3000), ("exact", READS), ("short", READS - 1)):
        lines = [" ".join(words[i : min(i + 20, n)]) for i in range(0, n, 20)]
        (d / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return d


def _eval(d, corpus: str, capsys) -> tuple[dict, str]:
    assert main(["transcoders", "eval", "--model", str(d / "model"), "--transcoders", str(d / "tc"), "--corpus",
                 str(d / f"{corpus}.txt"), "--plot", str(d / f"{corpus}.png"), *EVAL]) == 0  # fmt: skip
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    r.pop("plot")
    return r, cap.err


def test_eval_warns_only_when_the_text_repeats(eval_setup, capsys):
    """A corpus of exactly the tokens eval reads gives the large corpus's figures and no warning; one token fewer
    wraps around (other figures) and says so, in one line naming both counts."""
    d = eval_setup
    big, err = _eval(d, "big", capsys)
    assert "warning: corpus" not in err and big["tokens"] == 25 * 16 and big["splice"]["tokens"] > 0
    exact, err = _eval(d, "exact", capsys)
    assert "warning: corpus" not in err and exact == big
    short, err = _eval(d, "short", capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning: corpus")]
    assert warnings == [f"warning: corpus {d / 'short.txt'} has {READS - 1:,} tokens, fewer than the {READS:,} "
                        "asked for: they are repeated ~1.0 times (pass a larger corpus, or fewer --tokens / "
                        "--ce-tokens)"]  # fmt: skip
    assert short != big  # the last sequence wrapped around to the start


@pytest.mark.parametrize(("seq_len", "msg"), [("2", "--seq-len must be at least 3, got 2"),
                                              ("0", "--seq-len must be at least 3, got 0"),
                                              ("100000", "--seq-len 100000 is longer than model")])  # fmt: skip
def test_eval_seq_len_out_of_range_is_one_line(eval_setup, capsys, seq_len, msg):
    """--seq-len 1 or 2 left no token for the next-token loss (a division by zero and a traceback before)."""
    d = eval_setup
    argv = ["transcoders", "eval", "--model", str(d / "model"), "--transcoders", str(d / "tc"), "--corpus",
            str(d / "big.txt"), "--plot", str(d / "x.png"), "--seq-len", seq_len]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {msg}") and err.count("\n") == 1 and not (d / "x.png").exists()
