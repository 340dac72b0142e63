"""Offline Hugging Face cache: models and released transcoder sets (Gemma Scope npz, Gemma Scope 2 safetensors,
circuit-tracer release configs with hf:// URIs and short names) resolve and trace; missing entries are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTok
from tokenizers import models, pre_tokenizers, trainers

from tests.conftest import hf_snapshot, random_model, tiny_config
from tracer.cli import main
from tracer.errors import TranscoderLoadError
from tracer.hub import HfRef, NotInCacheError, cached_path, resolve_model, resolve_transcoders
from tracer.models import HookPoint, load_model, save_hf
from tracer.record import record
from transcoders import load_transcoders

TEXT = ["the cat sat on the mat", "the dog ate the bone", "a cat and a dog", "on the mat sat a dog"] * 20
L, D, F = 3, 16, 10
GS_FILE = "layer_{}/width_16k/average_l0_76/params.npz"




def _gs_params(layer: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(layer)
    f32 = np.float32
    return {"W_enc": rng.normal(0, 0.5, (D, F)).astype(f32), "W_dec": rng.normal(0, 0.3, (F, D)).astype(f32),
            "b_enc": rng.normal(0, 0.1, F).astype(np.float32), "b_dec": rng.normal(0, 0.1, D).astype(np.float32),
            "threshold": rng.uniform(0, 0.2, F).astype(np.float32)}  # fmt: skip


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A fake cache: a tiny Gemma-2 as google/gemma-2-2b, Gemma Scope npz files, circuit-tracer's `gemma` release
    config naming them by hf:// URI, and a Gemma Scope 2 set with an affine skip."""
    hub = tmp_path_factory.mktemp("hf") / "hub"
    tok = HFTok(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # type: ignore[assignment]
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>"]))
    cfg = tiny_config("gemma2", vocab_size=tok.get_vocab_size(), bos_token_id=1, eos_token_id=1)
    model_dir = hf_snapshot(hub, "google/gemma-2-2b")
    save_hf(cfg, random_model(cfg, dtype=torch.float32).state_dict(), model_dir)
    tok.save(str(model_dir / "tokenizer.json"))
    gs = hf_snapshot(hub, "google/gemma-scope-2b-pt-transcoders", "b" * 40)
    for i in range(L):
        (gs / GS_FILE.format(i)).parent.mkdir(parents=True)
        np.savez(gs / GS_FILE.format(i), **_gs_params(i))  # type: ignore[arg-type]
    release = hf_snapshot(hub, "mwhanna/gemma-scope-transcoders", "c" * 40)
    (release / "config.yaml").write_text(yaml.safe_dump({
        "model_name": "google/gemma-2-2b", "model_kind": "transcoder_set", "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out", "scan": "gemma-2-2b",
        "transcoders": [f"hf://google/gemma-scope-2b-pt-transcoders/{GS_FILE.format(i)}" for i in range(L)]}))
    gs2 = hf_snapshot(hub, "google/gemma-scope-2-270m-pt", "d" * 40)
    for i in range(L):
        p = _gs_params(i + 10)
        t = {"w_enc": p["W_enc"], "w_dec": p["W_dec"], "b_enc": p["b_enc"], "b_dec": p["b_dec"],
             "threshold": p["threshold"], "affine_skip_connection": np.full((D, D), 0.01 * (i + 1), np.float32)}
        t["affine_skip_connection"][0, 1] = 0.5  # not symmetric: a wrong transpose shows
        (gs2 / f"transcoder/layer_{i}").mkdir(parents=True)
        save_file({k: torch.from_numpy(v) for k, v in t.items()}, str(gs2 / f"transcoder/layer_{i}/params.safetensors"))
    (gs2 / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "transcoder_set", "feature_input_hook": "hook_resid_mid", "feature_output_hook": "hook_mlp_out",
        "transcoders": [f"transcoder/layer_{i}/params.safetensors" for i in range(L)]}))
    return hub


@pytest.fixture
def offline(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def test_refs_parse_and_resolve(offline):
    assert HfRef.parse("hf://google/gemma-scope-2b-pt-transcoders/layer_0/params.npz?revision=v1") == HfRef(
        "google/gemma-scope-2b-pt-transcoders", "layer_0/params.npz", "v1")
    assert HfRef.parse("mwhanna/gemma-scope-2-1b-pt/transcoder_all@abc") == HfRef(
        "mwhanna/gemma-scope-2-1b-pt", "transcoder_all", "abc")
    snap = offline / "models--google--gemma-2-2b" / "snapshots" / ("a" * 40)
    assert resolve_model("google/gemma-2-2b") == snap
    assert resolve_model(f"google/gemma-2-2b@{'a' * 40}") == snap
    release = offline / "models--mwhanna--gemma-scope-transcoders" / "snapshots" / ("c" * 40)
    assert resolve_transcoders("gemma") == release
    (offline / "models--google--gemma-2-2b" / "refs" / "main").unlink()  # a single snapshot is used without refs
    try:
        assert resolve_model("google/gemma-2-2b") == snap
    finally:
        (offline / "models--google--gemma-2-2b" / "refs" / "main").write_text("a" * 40)


def test_gemma_scope_npz_loads_transposed_eager_and_lazy(offline):
    eager, lazy = load_transcoders("gemma"), load_transcoders("gemma", lazy=True)
    assert eager.cfg.input_hook == HookPoint.LN2_NORMALIZED and eager.cfg.n_features == F and lazy.is_lazy
    feats = torch.tensor([3, 0, 9])
    for i in range(L):
        p = _gs_params(i)
        assert eager.theta is not None
        torch.testing.assert_close(eager.W_enc[i], torch.from_numpy(p["W_enc"].T), rtol=0, atol=0)
        torch.testing.assert_close(eager.theta[i], torch.from_numpy(p["threshold"]), rtol=0, atol=0)
        torch.testing.assert_close(lazy.decoder_rows(i, feats)[:, i], torch.from_numpy(p["W_dec"][[3, 0, 9]]),
                                   rtol=0, atol=0)  # fmt: skip
        assert torch.equal(eager.decoder_rows(i, feats), lazy.decoder_rows(i, feats))
    assert lazy.is_lazy  # rows came from the memory map


def test_gemma_scope_2_affine_skip(offline):
    tc = load_transcoders("google/gemma-scope-2-270m-pt")
    assert tc.cfg.skip and tc.W_skip is not None and tc.cfg.input_hook == HookPoint.RESID_MID
    x = torch.randn(2, L, D)
    for i in range(L):
        A = torch.full((D, D), 0.01 * (i + 1))
        A[0, 1] = 0.5
        torch.testing.assert_close(tc.skip(x)[:, i], x[:, i] @ A)  # Gemma Scope 2: skip(x) = x @ A
        torch.testing.assert_close(tc.W_enc[i], torch.from_numpy(_gs_params(i + 10)["W_enc"].T), rtol=0, atol=0)
    no_skip = offline / "models--google--gemma-scope-2-270m-pt" / "snapshots" / ("d" * 40) / "noskip"
    no_skip.mkdir(exist_ok=True)
    for i in range(L):
        p = _gs_params(i)
        save_file({"w_enc": torch.from_numpy(p["W_enc"]), "w_dec": torch.from_numpy(p["W_dec"]),
                   "b_enc": torch.from_numpy(p["b_enc"]), "b_dec": torch.from_numpy(p["b_dec"]),
                   "threshold": torch.from_numpy(p["threshold"])}, str(no_skip / f"l{i}.safetensors"))  # fmt: skip
    (no_skip / "config.yaml").write_text(yaml.safe_dump({"model_kind": "transcoder_set",
        "feature_input_hook": "hook_resid_mid", "feature_output_hook": "hook_mlp_out",
        "transcoders": [f"l{i}.safetensors" for i in range(L)]}))  # fmt: skip
    plain = load_transcoders(no_skip, lazy=True)
    assert not plain.cfg.skip and plain.W_skip is None


def test_cached_gemma_with_gemma_scope_records_and_traces(offline, tmp_path, capsys):
    lm = load_model("google/gemma-2-2b")
    assert lm.name == "google/gemma-2-2b" and lm.cfg.family == "gemma2" and lm.cfg.post_norms
    tc = load_transcoders("gemma", lm.cfg)
    assert lm.tokenizer is not None
    rec = record(lm.model, tc, torch.tensor(lm.tokenizer.encode_prompt("the cat sat", lm.cfg.n_ctx, 1)))
    assert rec.attn_post_scale is not None and len(rec.features) > 0
    out = tmp_path / "g.json"
    code = main(["trace", "the cat sat on", "--model", "google/gemma-2-2b", "--transcoders", "gemma", "-o", str(out),
                 "--json"])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and out.exists() and summary["stats"]["replacement_max_abs_logit_error"] < 1e-3


@pytest.mark.parametrize("args,what", [
    (["--model", "google/gemma-2-9b"], "google/gemma-2-9b"),
    (["--model", "google/gemma-2-2b", "--transcoders", "llama"], "mntss/transcoder-Llama-3.2-1B"),
    (["--model", "google/gemma-2-2b", "--transcoders", "google/gemma-scope-2b-pt-transcoders/nope"], "nope"),
])  # fmt: skip
def test_missing_from_cache_is_one_line(offline, tmp_path, capsys, args, what):
    code = main(["trace", "the cat", *args, "-o", str(tmp_path / "g.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("error: ") and what in err
    assert "huggingface-cli download" in err and str(offline) in err
    assert not (tmp_path / "g.json").exists()


def test_missing_layer_file_and_pickled_npz_refused(offline, tmp_path):
    victim = cached_path(f"google/gemma-scope-2b-pt-transcoders/{GS_FILE.format(1)}")
    data = victim.read_bytes()
    try:
        victim.unlink()
        with pytest.raises(NotInCacheError, match="layer_1/width_16k"):
            load_transcoders("gemma")
        np.savez(victim, **(_gs_params(1) | {"W_dec": np.array([object()], dtype=object)}))  # type: ignore[arg-type]
        with pytest.raises(TranscoderLoadError, match="pickle"):
            load_transcoders("gemma")
    finally:
        victim.write_bytes(data)


def test_real_model_with_the_bundled_clt_says_what_to_do(offline, tmp_path, capsys):
    code = main(["trace", "the cat", "--model", "google/gemma-2-2b", "-o", str(tmp_path / "g.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "bundled CLT belongs to the bundled model" in err
    assert "--transcoders" in err and "tracer transcoders train" in err
