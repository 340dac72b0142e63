import json
from typing import Any

import pytest
import torch

from tests.conftest import random_model, tiny_config
from transcoders import ActivationKind, TranscoderKind, load_transcoders
from transcoders.data import ActivationSource, sequences
from transcoders.train import CHECKPOINT, TrainConfig, init_state, loss_fn, train

BASE: dict[str, Any] = dict(n_features=32, tokens=6 * 128, batch_tokens=128, seq_len=17, buffer_tokens=256,
                            sparsity=0.05, warmup_steps=2, checkpoint_every=2, dead_window=256)  # fmt: skip


@pytest.fixture
def setup():
    model = random_model(tiny_config("llama"), dtype=torch.float32)
    stream = torch.randint(3, 50, (3000,), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    return model, stream


def test_sequences_prepend_bos_and_wrap():
    s = sequences(torch.arange(10, dtype=torch.int32), 2, 2, 4, bos=1)
    assert s.tolist() == [[1, 6, 7, 8], [1, 9, 0, 1]]


@pytest.mark.parametrize("activation", list(ActivationKind))
def test_training_lowers_loss(tmp_path, setup, activation):
    model, stream = setup
    cfg = TrainConfig.model_validate(BASE | dict(tokens=60 * 128, activation=activation, sparsity=0.01, lr=1e-2,
                                    topk_k=4 if activation == ActivationKind.TOPK else 0))  # fmt: skip
    src = ActivationSource(model, stream, cfg.input_hook, cfg.seq_len, cfg.buffer_tokens)
    before = loss_fn(cfg, init_state(cfg, model, src, "", ""), src.batch(0, 128), 0.0).nmse
    res = train(model, stream, cfg, tmp_path, progress=False)
    assert res is not None and res.final["nmse"] < 0.7 * before
    tc = load_transcoders(tmp_path, model.cfg)  # saved folded, in raw units
    from transcoders.metrics import reconstruction

    stats = reconstruction(model, tc, sequences(stream, 0, 16, cfg.seq_len, model.cfg.bos_token_id))
    assert sum(s.nmse for s in stats) / 3 < 0.7 * before


@pytest.mark.parametrize("kind,activation", [(TranscoderKind.CLT, ActivationKind.JUMPRELU),
                                             (TranscoderKind.PLT, ActivationKind.TOPK)])  # fmt: skip
def test_resume_after_kill_equals_uninterrupted(tmp_path, setup, kind, activation):
    model, stream = setup
    cfg = TrainConfig.model_validate(BASE | dict(kind=kind, activation=activation, skip=True,
                                    topk_k=4 if activation == ActivationKind.TOPK else 0))  # fmt: skip
    torch.manual_seed(5)
    train(model, stream, cfg, tmp_path / "a", progress=False)
    torch.manual_seed(5)
    # killed after 3 steps: the checkpoint of step 2 survives, step 3 is lost and redone
    assert train(model, stream, cfg, tmp_path / "b", stop_after=3, progress=False) is None
    assert not (tmp_path / "b" / "config.json").exists()
    torch.manual_seed(123)  # the resume restores the RNG from the checkpoint
    train(model, stream, cfg, tmp_path / "b", progress=False)
    a, b = load_transcoders(tmp_path / "a"), load_transcoders(tmp_path / "b")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    from safetensors.torch import load_file

    ca, cb = load_file(str(tmp_path / "a" / CHECKPOINT)), load_file(str(tmp_path / "b" / CHECKPOINT))
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)  # Adam state, counters, RNG
    assert json.loads((tmp_path / "b" / "training.json").read_text())["steps"] == 6


def test_resume_refuses_other_settings(tmp_path, setup):
    model, stream = setup
    cfg = TrainConfig.model_validate(BASE)
    train(model, stream, cfg, tmp_path, stop_after=2, progress=False)
    from tracer.errors import ConfigError

    with pytest.raises(ConfigError, match="n_features"):
        train(model, stream, cfg.model_copy(update={"n_features": 16}), tmp_path, progress=False)


def test_fold_scales_gives_same_outputs():
    from tests.transcoders.conftest import random_transcoder

    for kind in TranscoderKind:
        tc = random_transcoder(kind, skip=True).double()
        s_in, s_out = torch.tensor([2.0, 0.5, 3.0]), torch.tensor([0.25, 4.0, 1.5])
        x = torch.randn(7, 3, 16, dtype=torch.float64)
        want = tc(x * s_in[:, None]) / s_out[:, None]
        acts = tc.encode(x * s_in[:, None])
        tc.fold_scales(s_in, s_out)
        torch.testing.assert_close(tc(x), want)
        torch.testing.assert_close(tc.encode(x), acts)


def test_sparse_and_dense_loss_paths_agree(setup):
    """The entry-based (sparse) step computes the same loss and gradients as the dense one."""
    model, stream = setup
    cfg = TrainConfig.model_validate(BASE | dict(threshold_init=0.8, skip=True, dead_window=1))
    src = ActivationSource(model, stream, cfg.input_hook, cfg.seq_len, cfg.buffer_tokens)
    st = init_state(cfg, model, src, "", "")
    st.since_fired[0, :5] = 1  # some dead features: the pre-activation loss is active
    b = src.batch(0, 128)
    out = []
    for dense in (False, True):
        st.tc.zero_grad()
        r = loss_fn(cfg.model_copy(update={"preact": 0.1}), st, b, 0.3, force_dense=dense)
        r.loss.backward()
        out.append((r, {k: p.grad.clone() for k, p in st.tc.named_parameters() if p.grad is not None}))
    (rs, gs), (rd, gd) = out
    assert 0 < rs.l0 < 32 * 3 / 16  # the sparse path was taken
    torch.testing.assert_close(rs.loss, rd.loss)
    assert rs.l0 == rd.l0 and torch.equal(rs.fired, rd.fired)
    assert gs.keys() == gd.keys() and len(gs) >= 6
    for k in gs:
        torch.testing.assert_close(gs[k], gd[k], rtol=1e-4, atol=1e-6)


def test_reused_buffers_are_reshuffled_copies(setup, tmp_path):
    model, stream = setup
    for cache in (None, tmp_path):
        src = ActivationSource(model, stream, TrainConfig().input_hook, 17, 64, cache_dir=cache, n_unique=2)
        b0, b2 = src.buffer(0), src.buffer(2)
        assert not torch.equal(b0.x, b2.x)  # another order ...
        key = lambda b: sorted(map(tuple, b.x.flatten(1).tolist()))
        assert key(b0) == key(b2)  # ... of the same tokens


def test_warm_start_loads_weights(tmp_path, setup):
    model, stream = setup
    cfg = TrainConfig.model_validate(BASE)
    train(model, stream, cfg, tmp_path / "a", progress=False)
    src = ActivationSource(model, stream, cfg.input_hook, cfg.seq_len, cfg.buffer_tokens)
    st = init_state(cfg, model, src, "", "", init_from=tmp_path / "a" / CHECKPOINT)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "a" / CHECKPOINT))
    assert all(torch.equal(v, saved[f"tc.{k}"]) for k, v in st.tc.state_dict().items())
