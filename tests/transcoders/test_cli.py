import json
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from tests.conftest import random_model, tiny_config
from tracer.cli import main
from tracer.models import save_hf
from transcoders import TranscoderFormat, detect_format, load_transcoders

WORDS = [f"w{i}" for i in range(45)]


@pytest.fixture
def model_dir(tmp_path):
    cfg = tiny_config("llama")
    model = random_model(cfg, dtype=torch.float32)
    save_hf(cfg, model.state_dict(), tmp_path / "model")
    tok = Tokenizer(WordLevel({w: i + 3 for i, w in enumerate(WORDS)} | {"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()  # type: ignore[assignment]
    tok.save(str(tmp_path / "model" / "tokenizer.json"))
    g = torch.Generator().manual_seed(0)
    text = "\n".join(" ".join(WORDS[i] for i in torch.randint(0, 45, (20,), generator=g)) for _ in range(300))
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(text)
    return tmp_path


def test_train_eval_convert(model_dir, capsys):
    d = model_dir
    args = ["transcoders", "train", "--model", str(d / "model"), "--kind", "clt", "--features", "24", "--tokens",
            "1024", "--corpus", str(d / "corpus"), "--out", str(d / "tc"), "--batch-tokens", "128", "--seq-len", "17",
            "--buffer-tokens", "512", "--no-progress", "--dtype", "float16"]  # fmt: skip
    assert main(args) == 0
    assert load_transcoders(d / "tc").W_enc.dtype == torch.float16
    capsys.readouterr()
    assert main(["transcoders", "eval", "--model", str(d / "model"), "--transcoders", str(d / "tc"), "--corpus",
                 str(d / "corpus"), "--tokens", "400", "--ce-tokens", "200", "--seq-len", "17", "--json",
                 "--plot", str(d / "p.png")]) == 0  # fmt: skip
    out = capsys.readouterr().out.strip()
    r = json.loads(out)  # exactly one JSON object on stdout
    assert r["tokens"] >= 400 and len(r["layers"]) == 3 and 0 <= r["splice"]["top1_agreement"] <= 1
    assert (d / "p.png").exists()
    assert main(["transcoders", "convert", str(d / "tc"), str(d / "ct"), "--to", "circuit-tracer"]) == 0
    assert detect_format(d / "ct") == TranscoderFormat.CIRCUIT_TRACER
    a, b = load_transcoders(d / "tc"), load_transcoders(d / "ct")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_cli_errors_are_one_line(model_dir, capsys):
    d = model_dir
    assert main(["transcoders", "eval", "--model", str(d / "model"), "--transcoders", str(d / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert main(["transcoders", "train", "--model", str(d / "model"), "--corpus", str(d / "nope.txt"), "--out",
                 str(d / "o")]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err


MIB = 1 << 20


@pytest.mark.parametrize(("available", "buffer", "note"), [
    (240 * MIB, 262_144, None),  # two default buffers (2 x 48 MiB) fill exactly 40 %: no note
    (240 * MIB - 1, 131_072, "note: buffers of 131,072 tokens (0.02 GiB in fp16) instead of 262,144, to fit in memory"),
    (100 * MIB, 65_536, "note: buffers of 65,536 tokens (0.01 GiB in fp16) instead of 262,144, to fit in memory"),
], ids=["fits", "one-byte-short", "small"])  # fmt: skip
def test_default_buffer_is_halved_to_fit_with_one_note(model_dir, capsys, monkeypatch, available, buffer, note):
    """Without --buffer-tokens the default buffer (3 layers x d_model 16 x 2 x fp16: 192 bytes a token) is halved
    until two fit in 40 % of the available memory, said in exactly one `note:` line; none when it fits."""
    import transcoders.data
    import transcoders.train

    got: list[int] = []

    def fake_train(model, stream, cfg, *a, **k):
        got.append(cfg.buffer_tokens)
        return SimpleNamespace(steps=0, tokens_per_s=0.0, final={"nmse": 0.0, "l0": 0.0, "dead": 0.0})

    monkeypatch.setattr(transcoders.data, "available_bytes", lambda: available)
    monkeypatch.setattr(transcoders.train, "train", fake_train)
    d = model_dir
    assert main(["transcoders", "train", "--model", str(d / "model"), "--corpus", str(d / "corpus"), "--out",
                 str(d / "tc"), "--tokens", "1024", "--batch-tokens", "128", "--no-progress"]) == 0  # fmt: skip
    assert got == [buffer]
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ([note] if note else [])
