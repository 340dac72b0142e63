"""Release files: a zip-compressed Gemma Scope `params.npz` loads the same values as an uncompressed one (read whole,
while an uncompressed W_dec is memory-mapped), and Gemma Scope 2 CLTs are refused in one line, downloaded or not."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from tests.conftest import hf_snapshot, tiny_config
from tracer.cli import main
from tracer.errors import TranscoderLoadError
from transcoders import load_transcoders

L, D, F = 3, 16, 10
GS2_REPO, GS2_SUB = "google/gemma-scope-2-1b-pt", "clt/width_262k_l0_medium_affine"


def _gs_params(layer: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + layer)
    f32 = np.float32
    return {"W_enc": rng.normal(0, 0.5, (D, F)).astype(f32), "W_dec": rng.normal(0, 0.3, (F, D)).astype(f32),
            "b_enc": rng.normal(0, 0.1, F).astype(f32), "b_dec": rng.normal(0, 0.1, D).astype(f32),
            "threshold": rng.uniform(0, 0.2, F).astype(f32)}  # fmt: skip


def _gemma_scope_set(folder, compressed: bool):
    """A release config naming one Gemma Scope params.npz per layer (paths relative to the config)."""
    save = np.savez_compressed if compressed else np.savez
    names = []
    for i in range(L):
        (folder / f"layer_{i}").mkdir(parents=True)
        save(folder / f"layer_{i}/params.npz", **_gs_params(i))  # type: ignore[arg-type]
        names.append(f"layer_{i}/params.npz")
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "transcoder_set", "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out", "transcoders": names}))  # fmt: skip
    return folder


@pytest.fixture
def sets(tmp_path):
    plain, zipped = _gemma_scope_set(tmp_path / "plain", False), _gemma_scope_set(tmp_path / "zipped", True)
    with zipfile.ZipFile(plain / "layer_0/params.npz") as a, zipfile.ZipFile(zipped / "layer_0/params.npz") as b:
        assert a.getinfo("W_dec.npy").compress_type == zipfile.ZIP_STORED
        assert b.getinfo("W_dec.npy").compress_type == zipfile.ZIP_DEFLATED
    return plain, zipped


def test_compressed_npz_loads_identical_values_eager(sets):
    plain, zipped = sets
    a, b = load_transcoders(plain), load_transcoders(zipped)
    assert a.cfg == b.cfg and b.W_enc.dtype == torch.float32
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for i in range(L):  # and they are the file's values (W_enc stored transposed)
        p = _gs_params(i)
        assert torch.equal(b.W_enc[i], torch.from_numpy(p["W_enc"].T.copy()))
        assert torch.equal(b.decoder(i)[:, 0], torch.from_numpy(p["W_dec"]))


def test_compressed_npz_loads_lazy_like_uncompressed(sets):
    """trace loads transcoders lazily: a compressed W_dec is read whole but answers row reads the same way."""
    plain, zipped = sets
    a, b = load_transcoders(plain, lazy=True), load_transcoders(zipped, lazy=True)
    assert a.is_lazy and b.is_lazy
    feats = torch.tensor([7, 0, 9, 7])
    for i in range(L):
        want = torch.from_numpy(_gs_params(i)["W_dec"][[7, 0, 9, 7]])
        rb = b.decoder_rows(i, feats)
        assert torch.equal(rb, a.decoder_rows(i, feats))
        assert torch.equal(rb[:, i], want) and not rb[:, [j for j in range(L) if j != i]].any()
    b.materialize()  # full decoding / saving reads every row
    assert torch.equal(b.decoder(2)[:, 0], torch.from_numpy(_gs_params(2)["W_dec"]))


def test_uncompressed_w_dec_is_mapped_compressed_read_whole(sets):
    """An uncompressed W_dec is read from the file when rows are asked for (memory-mapped: a change on disk after
    loading shows); a compressed one was read whole at load (the change does not show)."""
    plain, zipped = sets
    old = _gs_params(1)["W_dec"]
    a, b = load_transcoders(plain, lazy=True), load_transcoders(zipped, lazy=True)
    f = plain / "layer_1/params.npz"
    data = f.read_bytes()
    at = data.index(old.tobytes())
    with open(f, "r+b") as h:  # row 4 of the stored W_dec becomes 1.0 everywhere
        h.seek(at + 4 * D * 4)
        h.write(np.ones(D, np.float32).tobytes())
    np.savez_compressed(zipped / "layer_1/params.npz", **(_gs_params(1) | {"W_dec": old + 1}))  # type: ignore[arg-type]
    rows = torch.tensor([4, 5])
    assert torch.equal(a.decoder_rows(1, rows)[:, 1], torch.tensor(np.stack([np.ones(D, np.float32), old[5]])))
    assert torch.equal(b.decoder_rows(1, rows)[:, 1], torch.from_numpy(old[[4, 5]]))


# ---- Gemma Scope 2 CLTs ------------------------------------------------------------------------------------




@pytest.fixture
def gs2_clt(tmp_path, monkeypatch):
    """circuit-tracer's release config for a Gemma Scope 2 CLT (mwhanna/...): one hf:// file per layer, each with the
    encoder of its layer and the decoders to every later layer (w_dec [F, L - i, D])."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    files = hf_snapshot(hub, GS2_REPO, "e" * 40) / GS2_SUB
    files.mkdir(parents=True)
    for i in range(L):
        g = torch.Generator().manual_seed(i)
        save_file({"w_enc": torch.randn(D, F, generator=g), "w_dec": torch.randn(F, L - i, D, generator=g),
                   "b_enc": torch.zeros(F), "b_dec": torch.zeros(D), "threshold": torch.rand(F, generator=g),
                   "affine_skip_connection": torch.zeros(D, D)},
                  str(files / f"params_layer_{i}.safetensors"))  # fmt: skip
    cfg = hf_snapshot(hub, "mwhanna/gemma-scope-2-1b-pt", "f" * 40) / GS2_SUB
    cfg.mkdir(parents=True)
    (cfg / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "cross_layer_transcoder", "model_name": "google/gemma-3-1b-pt",
        "feature_input_hook": "hook_resid_mid", "feature_output_hook": "hook_mlp_out",
        "transcoders": [f"hf://{GS2_REPO}/{GS2_SUB}/params_layer_{i}.safetensors" for i in range(L)]}))  # fmt: skip
    return f"mwhanna/gemma-scope-2-1b-pt/{GS2_SUB}", files


def _assert_refusal(msg: str, name: str) -> None:
    assert "\n" not in msg and "Gemma Scope 2 CLTs" in msg and "not supported" in msg
    assert f"{name.split('/', 2)[2]}/config.yaml" in msg and "huggingface-cli download" not in msg


@pytest.mark.parametrize("downloaded", [True, False], ids=["files-cached", "files-missing"])
def test_gemma_scope_2_clt_refused_in_one_line(gs2_clt, downloaded):
    """Refused whether or not its per-layer files are in the cache: a missing file must not first ask for a
    (multi-GB) download of files that would then be refused."""
    name, files = gs2_clt
    if not downloaded:
        for f in files.iterdir():
            f.unlink()
    for lazy in (False, True):
        with pytest.raises(TranscoderLoadError) as e:
            load_transcoders(name, tiny_config("gemma3"), lazy=lazy)
        _assert_refusal(str(e.value), name)


def test_gemma_scope_2_clt_refused_by_trace(gs2_clt, tmp_path, capsys):
    name, _ = gs2_clt
    out = tmp_path / "g.json"
    assert main(["trace", "the cat", "--transcoders", name, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and not out.exists()
    _assert_refusal(err, name)
