"""`--layers`: the spec parser, subset training/evaluation, embedding of a subset set, tracing a partial set."""

import json

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import random_model, tiny_config
from tests.transcoders.conftest import random_transcoder
from tests.transcoders.test_cli import model_dir  # noqa: F401  (fixture)
from tracer.cli import main
from tracer.errors import ConfigError
from tracer.models import HookPoint, Site, load_model
from transcoders import TranscoderKind, load_transcoders
from transcoders.data import sequences, tokenize_corpus
from transcoders.layers import embed, parse_layers
from transcoders.metrics import evaluate
from transcoders.train import TrainConfig, train


@pytest.mark.parametrize(("spec", "want"), [("0-3,7", (0, 1, 2, 3, 7)), ("5", (5,)), (" 2 , 0-1,1 ", (0, 1, 2)),
                                            ("7,3-3", (3, 7)), ("0-7", tuple(range(8)))])  # fmt: skip
def test_parse_layers_good(spec, want):
    assert parse_layers(spec, 8) == want


@pytest.mark.parametrize(("spec", "why"), [("", "expected"), ("1,,2", "expected"), ("a", "expected"),
                                           ("1-", "expected"), ("-1", "expected"), ("1.5", "expected"),
                                           ("3-1", "reversed"), ("8", "does not exist"),
                                           ("0-8", "does not exist")])  # fmt: skip
def test_parse_layers_bad(spec, why):
    with pytest.raises(ConfigError, match=why) as e:
        parse_layers(spec, 8)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", [TranscoderKind.CLT, TranscoderKind.PLT])
def test_embed_matches_the_subset_set(kind):
    """The embedded set reproduces the subset set at its layers (the reference), writes nothing elsewhere and has
    no active feature at the absent layers."""
    sub = random_transcoder(kind, n_layers=2, d_model=16, n_features=12, seed=3)
    full = embed(sub, (0, 2), 3)
    assert full.cfg.layers == (0, 2) and full.cfg.n_layers == 3
    x = torch.randn(20, 3, 16, generator=torch.Generator().manual_seed(1))
    acts = full.encode(x)
    assert not acts[:, 1].any()
    torch.testing.assert_close(acts[:, [0, 2]], sub.encode(x[:, [0, 2]]), rtol=0, atol=0)
    y = full(x)
    torch.testing.assert_close(y[:, [0, 2]], sub(x[:, [0, 2]]), rtol=1e-6, atol=1e-6)
    assert not y[:, 1].any()


def _train(d, out, *extra):
    return main(["transcoders", "train", "--model", str(d / "model"), "--kind", "plt", "--features", "24", "--tokens",
                 "512", "--corpus", str(d / "corpus"), "--out", str(out), "--batch-tokens", "128", "--seq-len", "17",
                 "--buffer-tokens", "256", "--no-progress", *extra])  # fmt: skip


def test_train_and_eval_one_layer(model_dir, capsys):  # noqa: F811
    d = model_dir
    assert _train(d, d / "tc", "--layers", "1") == 0
    tc = load_transcoders(d / "tc")
    assert tc.cfg.layers == (1,) and tc.cfg.n_layers == 3
    assert json.loads((d / "tc" / "config.json").read_text())["layers"] == [1]
    for layer in (0, 2):  # untouched: zero weights, nothing decoded there
        assert not tc.W_enc[layer].any() and not tc.b_enc[layer].any() and not tc.b_dec[layer].any()
        assert not tc.decoder(layer).any()
    assert tc.W_enc[1].any() and tc.decoder(1).any()
    assert main(["transcoders", "convert", str(d / "tc"), str(d / "ct"), "--to", "circuit-tracer"]) == 0
    assert load_transcoders(d / "ct").cfg.layers == (1,)  # the other format keeps naming the layers too
    capsys.readouterr()
    assert main(["transcoders", "eval", "--model", str(d / "model"), "--transcoders", str(d / "tc"), "--corpus",
                 str(d / "corpus"), "--tokens", "160", "--ce-tokens", "75", "--seq-len", "17", "--json",
                 "--plot", str(d / "p.png")]) == 0  # fmt: skip
    r = json.loads(capsys.readouterr().out)
    assert [s["layer"] for s in r["layers"]] == [1]
    # the reported layer-1 NMSE and zero-ablated CE, recomputed by hand from the model's own hooks
    lm = load_model(d / "model")
    stream = tokenize_corpus(lm.tokenizer, d / "corpus", 10**6)  # type: ignore[arg-type]
    toks = sequences(stream, 0, 10, 17, lm.cfg.bos_token_id)
    sites = [Site(HookPoint.MLP_IN, 1), Site(HookPoint.MLP_OUT, 1)]
    with torch.no_grad(), lm.model.hooks.capture(sites) as cache:
        lm.model(toks)
    x, y = (cache[s][:, 1:].flatten(0, 1).double() for s in sites)
    W, b, th = tc.W_enc[1].double(), tc.b_enc[1].double(), tc.theta[1].double()  # type: ignore[index]
    pre = x @ W.T + b
    y_hat = (pre * (pre > th)) @ tc.decoder(1)[:, 0].double() + tc.b_dec[1].double()
    nmse = (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert r["layers"][0]["nmse"] == pytest.approx(float(nmse), rel=1e-4)
    ce_toks = sequences(stream, 10, 5, 17, lm.cfg.bos_token_id)
    zero = {Site(HookPoint.MLP_OUT, 1): lambda o: torch.cat([o[:, :1], torch.zeros_like(o[:, 1:])], 1)}
    with torch.no_grad(), lm.model.hooks.attached(zero):
        logits = lm.model(ce_toks)
    ce = F.cross_entropy(logits[:, 1:-1].flatten(0, 1).double(), ce_toks[:, 2:].flatten())
    assert r["splice"]["ce_zero_ablated"] == pytest.approx(float(ce), rel=1e-6)
    # a layer the set does not have, and a bad spec: one line, exit 2
    for args, why in ((["--layers", "0"], "has no layer 0"), (["--layers", "9"], "does not exist")):
        assert main(["transcoders", "eval", "--model", str(d / "model"), "--transcoders", str(d / "tc"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and why in err and "\n" not in err
    assert _train(d, d / "bad", "--layers", "1-x") == 2
    assert "expected layers" in capsys.readouterr().err and not (d / "bad" / "config.json").exists()
    assert _train(d, d / "tc", "--layers", "0-1") == 2  # its checkpoint was made for layer 1 only
    assert "other settings (layers)" in capsys.readouterr().err and load_transcoders(d / "tc").cfg.layers == (1,)


def test_all_layers_subset_is_the_default_run(model_dir):  # noqa: F811
    """The subset path over every layer (harvest by layer list, embed) is bit-identical to the default path."""
    d = model_dir
    lm = load_model(d / "model")
    stream = tokenize_corpus(lm.tokenizer, d / "corpus", 4096)  # type: ignore[arg-type]
    runs = []
    for i, layers in enumerate((None, (0, 1, 2))):
        cfg = TrainConfig(kind=TranscoderKind.CLT, n_features=16, tokens=512, batch_tokens=128, seq_len=17,
                          buffer_tokens=256, layers=layers)  # fmt: skip
        res = train(lm.model, stream, cfg, d / f"run{i}", progress=False)
        assert res is not None
        runs.append(res.transcoder)
    a, b = runs
    assert a.cfg.layers is None and b.cfg.layers == (0, 1, 2)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    ev = [evaluate(lm.model, a, stream, 64, 30, 17, layers=layers) for layers in (None, (0, 1, 2))]
    assert ev[0] == ev[1]


def test_trace_partial_set_puts_absent_layers_in_the_error():
    """A partial set traces: features only at its layers; an absent layer's error is its whole MLP output."""
    from tracer.attribute import attribute
    from tracer.record import record

    model = random_model(tiny_config("llama"), dtype=torch.float32)
    sub = random_transcoder(TranscoderKind.PLT, n_layers=1, d_model=model.cfg.d_model, seed=2)
    tc = embed(sub, (1,), model.cfg.n_layers)
    tokens = torch.tensor([1, 5, 9, 3, 7])
    rec = record(model, tc, tokens)
    assert rec.features.shape[0] > 0 and set(rec.features[:, 0].tolist()) == {1}
    torch.testing.assert_close(rec.errors[:, [0, 2]], rec.mlp_out[:, [0, 2]], rtol=0, atol=0)
    res = attribute(model, tc, tokens, None)
    assert set(res.layout.features[:, 0].tolist()) == {1}
    for layer in (0, 2):  # position 0 (BOS) is zeroed in the graph
        torch.testing.assert_close(res.error_norms[layer, 1:].double(), rec.mlp_out[1:, layer].norm(dim=-1).double(),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip


def test_subset_buffers_are_sized_for_their_layers(monkeypatch):
    import transcoders.data as data

    model = random_model(tiny_config("llama"), dtype=torch.float32)
    D = model.cfg.d_model
    assert data.buffer_bytes(model, 100) == 2 * 100 * 3 * D * 2
    assert data.buffer_bytes(model, 100, layers=(1,)) == 2 * 100 * 1 * D * 2
    budget = 2 * (2 * 1024 * 3 * D * 2)  # two buffers of 1,024 tokens of every layer (one kept + one shuffled)
    monkeypatch.setattr(data, "available_bytes", lambda: budget / 0.4)
    assert data.fit_buffer_tokens(model, 4096, 64) == 1024
    assert data.fit_buffer_tokens(model, 4096, 64, layers=(1,)) == 2048  # 3x fewer bytes: the next power of two


@pytest.mark.parametrize("cmd", ["train", "eval"])
def test_help_documents_layers(cmd, capsys):
    with pytest.raises(SystemExit) as e:  # argparse formats every help text: a stray % used to crash train --help
        main(["transcoders", cmd, "--help"])
    assert e.value.code == 0
    assert "--layers SPEC" in capsys.readouterr().out
