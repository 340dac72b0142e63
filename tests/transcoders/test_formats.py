import pytest
import torch
import yaml

from tests.conftest import tiny_config
from tests.transcoders.conftest import random_transcoder
from tracer.errors import TranscoderLoadError
from tracer.models import HookPoint, Site
from transcoders import (
    ActivationKind,
    TranscoderFormat,
    TranscoderKind,
    detect_format,
    load_transcoders,
    save_transcoders,  # fmt: skip
)

CLT, PLT, JUMP, RELU = TranscoderKind.CLT, TranscoderKind.PLT, ActivationKind.JUMPRELU, ActivationKind.RELU
CASES = [(CLT, JUMP, True), (CLT, RELU, False), (PLT, JUMP, False), (PLT, RELU, True)]


def assert_same(a, b):
    assert a.cfg == b.cfg
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("kind,act,skip", CASES)
@pytest.mark.parametrize("fmt", list(TranscoderFormat))
def test_save_load_exact(tmp_path, kind, act, skip, fmt):
    tc = random_transcoder(kind, act, skip)
    save_transcoders(tc, tmp_path, fmt)
    assert detect_format(tmp_path) == fmt
    assert_same(tc, load_transcoders(tmp_path, tiny_config("llama")))


@pytest.mark.parametrize("kind,act,skip", CASES)
def test_conversion_both_ways_exact(tmp_path, kind, act, skip):
    tc = random_transcoder(kind, act, skip, input_hook=HookPoint.RESID_MID)
    save_transcoders(tc, tmp_path / "ours", TranscoderFormat.OURS)
    save_transcoders(load_transcoders(tmp_path / "ours"), tmp_path / "ct", TranscoderFormat.CIRCUIT_TRACER)
    save_transcoders(load_transcoders(tmp_path / "ct"), tmp_path / "back", TranscoderFormat.OURS)
    for d in ("ct", "back"):
        assert_same(tc, load_transcoders(tmp_path / d))


def test_circuit_tracer_layout(tmp_path):
    tc = random_transcoder(TranscoderKind.CLT, n_layers=3, d_model=16, n_features=12)
    save_transcoders(tc, tmp_path, TranscoderFormat.CIRCUIT_TRACER)
    from safetensors.torch import load_file

    dec1 = load_file(str(tmp_path / "W_dec_1.safetensors"))["W_dec_1"]
    assert dec1.shape == (12, 2, 16)
    # slice k of source layer 1 writes to layer 1 + k
    torch.testing.assert_close(tc.decoder_rows(1, torch.tensor([5]))[0, 2], dec1[5, 1], rtol=0, atol=0)
    enc2 = load_file(str(tmp_path / "W_enc_2.safetensors"))
    assert (
        tc.theta is not None
        and torch.equal(enc2["b_dec_2"], tc.b_dec[2])
        and torch.equal(enc2["threshold_2"], tc.theta[2])
    )
    meta = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert meta["model_kind"] == "cross_layer_transcoder" and meta["feature_output_hook"] == "hook_mlp_out"


@pytest.mark.parametrize("kind", list(TranscoderKind))
@pytest.mark.parametrize("fmt", list(TranscoderFormat))
def test_lazy_matches_eager(tmp_path, kind, fmt):
    tc = random_transcoder(kind, skip=True)
    save_transcoders(tc, tmp_path, fmt)
    eager, lazy = load_transcoders(tmp_path), load_transcoders(tmp_path, lazy=True)
    assert lazy.is_lazy
    x = torch.randn(5, 3, 16)
    assert torch.equal(eager.encode(x), lazy.encode(x))
    for layer in range(3):
        feats = torch.tensor([7, 0, 11, 7])
        rows = lazy.decoder_rows(layer, feats)
        assert torch.equal(rows, eager.decoder_rows(layer, feats))
        nz = (rows.abs().sum((0, 2)) > 0).tolist()
        writes = list(range(layer, 3)) if kind == TranscoderKind.CLT else [layer]
        assert [i for i, v in enumerate(nz) if v] == writes
    assert lazy.is_lazy  # decoder_rows read rows only
    torch.testing.assert_close(eager(x), lazy(x), rtol=1e-6, atol=1e-6)  # lazy decode sums active rows only
    assert lazy.is_lazy  # decode did not materialise the decoders


def test_decode_matches_decoder_rows():
    tc = random_transcoder(TranscoderKind.CLT, skip=False)
    acts = torch.zeros(1, 3, 12)
    acts[0, 0, 4], acts[0, 1, 9] = 2.0, -0.5
    expect = tc.b_dec + 2.0 * tc.decoder_rows(0, torch.tensor([4]))[0] - 0.5 * tc.decoder_rows(1, torch.tensor([9]))[0]
    torch.testing.assert_close(tc.decode(acts)[0], expect)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("fmt", list(TranscoderFormat))
def test_mismatch_errors(tmp_path, fmt):
    save_transcoders(random_transcoder(), tmp_path, fmt)
    with pytest.raises(TranscoderLoadError) as e:
        load_transcoders(tmp_path, tiny_config("llama", d_model=32, n_heads=4))
    assert "d_model 16" in _one_line(e) and "32" in str(e.value)
    with pytest.raises(TranscoderLoadError) as e:
        load_transcoders(tmp_path, tiny_config("llama", n_layers=4))
    assert "3 layers" in _one_line(e) and "4" in str(e.value)


@pytest.mark.parametrize("fmt,victim", [(TranscoderFormat.OURS, "decoder.safetensors"),
                                        (TranscoderFormat.OURS, "encoder.safetensors"),
                                        (TranscoderFormat.CIRCUIT_TRACER, "W_dec_1.safetensors"),
                                        (TranscoderFormat.CIRCUIT_TRACER, "W_enc_0.safetensors")])  # fmt: skip
@pytest.mark.parametrize("lazy", [False, True])
def test_corrupt_file(tmp_path, fmt, victim, lazy):
    save_transcoders(random_transcoder(), tmp_path, fmt)
    data = (tmp_path / victim).read_bytes()
    (tmp_path / victim).write_bytes(data[: len(data) // 2])
    with pytest.raises(TranscoderLoadError) as e:
        load_transcoders(tmp_path, lazy=lazy)
    assert victim in _one_line(e)


def test_missing_config_and_dir(tmp_path):
    save_transcoders(random_transcoder(), tmp_path, TranscoderFormat.OURS)
    (tmp_path / "config.json").unlink()
    with pytest.raises(TranscoderLoadError) as e:
        load_transcoders(tmp_path)
    assert "no config.json" in _one_line(e)
    with pytest.raises(TranscoderLoadError, match="does not exist"):
        load_transcoders(tmp_path / "nope")


def test_bad_config_values(tmp_path):
    save_transcoders(random_transcoder(), tmp_path, TranscoderFormat.CIRCUIT_TRACER)
    meta = yaml.safe_load((tmp_path / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(meta | {"feature_input_hook": "hook_attn_out"}))
    with pytest.raises(TranscoderLoadError) as e:
        load_transcoders(tmp_path)
    assert "hook_attn_out" in _one_line(e)
    expected = {"mlp.hook_in": HookPoint.MLP_IN, "ln2.hook_normalized": HookPoint.LN2_NORMALIZED,
                "blocks.0.hook_resid_mid": HookPoint.RESID_MID}  # fmt: skip
    for name, expect in expected.items():
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(meta | {"feature_input_hook": name}))
        assert load_transcoders(tmp_path).cfg.input_hook == expect
    save_transcoders(random_transcoder(), tmp_path / "o", TranscoderFormat.OURS)
    (tmp_path / "o" / "config.json").write_text('{"kind": "clt"}')
    with pytest.raises(TranscoderLoadError) as e:
        load_transcoders(tmp_path / "o")
    assert "config.json" in _one_line(e)


def test_topk_cannot_be_saved_as_circuit_tracer(tmp_path):
    with pytest.raises(TranscoderLoadError, match="TopK"):
        save_transcoders(random_transcoder(activation=ActivationKind.TOPK), tmp_path, TranscoderFormat.CIRCUIT_TRACER)


def test_dtype_on_load(tmp_path):
    tc = random_transcoder()
    save_transcoders(tc.to(torch.float16), tmp_path)
    half = load_transcoders(tmp_path)
    assert half.W_enc.dtype == torch.float16 and half.cfg.dtype.value == "float16"
    full = load_transcoders(tmp_path, dtype=torch.float32)
    assert full.W_enc.dtype == torch.float32 and torch.equal(full.W_enc, half.W_enc.float())


def test_sparse_decode_matches_dense_values_and_gradients():
    tc = random_transcoder(TranscoderKind.CLT, skip=False).double().requires_grad_(True)
    acts = torch.rand(6, 3, 12, dtype=torch.float64) * (torch.rand(6, 3, 12) < 0.05)
    support = (acts != 0) | (torch.rand(6, 3, 12) < 0.02)
    grads = []
    for sup in (support, torch.ones_like(support)):  # sparse path vs dense path (full support)
        a = acts.clone().requires_grad_(True)
        tc.zero_grad()
        out = tc.decode(a, sup)
        (out * torch.linspace(-1, 1, 16, dtype=torch.float64)).sum().backward()
        assert a.grad is not None
        grads.append((out.detach(), a.grad * support, [w.grad.clone() for w in tc.W_dec or []]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    for g0, g1 in zip(grads[0][2], grads[1][2], strict=True):
        torch.testing.assert_close(g0, g1)


def test_ln2_hook_normalized_reads_before_the_weight(tmp_path):
    """A circuit-tracer set whose feature_input_hook is `ln2.hook_normalized`: the recorded activations are the
    JumpReLU of W_enc x / rms(x) + b_enc computed by hand (before the RMSNorm weight, which is not all ones)."""
    from tests.conftest import random_model
    from tracer.record import record

    model = random_model(tiny_config("llama"))
    tc = random_transcoder(TranscoderKind.PLT, JUMP, skip=False)
    save_transcoders(tc, tmp_path, TranscoderFormat.CIRCUIT_TRACER)
    meta = yaml.safe_load((tmp_path / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(meta | {"feature_input_hook": "ln2.hook_normalized"}))
    loaded = load_transcoders(tmp_path, model.cfg)
    assert loaded.cfg.input_hook == HookPoint.LN2_NORMALIZED
    tokens = torch.tensor([1, 5, 9, 3, 7])
    rec = record(model, loaded, tokens)
    with model.hooks.capture(Site(HookPoint.RESID_MID, layer) for layer in range(3)) as cache:
        model(tokens[None])
    assert loaded.theta is not None
    flips = 0
    for layer in range(3):
        x = cache[Site(HookPoint.RESID_MID, layer)][0, 1:]
        xn = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.norm_eps).sqrt()
        pre = xn @ loaded.W_enc[layer].T.double() + loaded.b_enc[layer].double()
        hand = pre * (pre > loaded.theta[layer].double())
        torch.testing.assert_close(rec.acts[1:, layer], hand, atol=1e-5, rtol=0)
        w = model.block(layer).ln2.weight
        pre_w = (xn * w) @ loaded.W_enc[layer].T.double() + loaded.b_enc[layer].double()  # post-weight reading
        flips += int(((pre_w > loaded.theta[layer]) != (pre > loaded.theta[layer])).sum())
    assert flips > 0  # reading after the weight would have given another active set
