"""Distributed training on 2 local gloo processes (torch.multiprocessing): a data-parallel step equals one step on
the concatenated batch in one process, the feature-sharded reconstruction and step equal the unsharded ones, and a
checkpoint written by 2 ranks resumes in one process."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize

from tests.conftest import random_model, tiny_config
from tests.transcoders.conftest import random_transcoder
from tracer.distributed import World
from transcoders import distributed as dt
from transcoders import train as tr

pytestmark = pytest.mark.slow
T, L, D, F = 16, 3, 16, 12
CFG = tr.TrainConfig(n_features=F, skip=True, lr=1e-3, dead_window=100, preact=1e-2, sparsity=0.5)


def _state(cfg: tr.TrainConfig = CFG) -> tr.State:
    tc = random_transcoder(n_features=cfg.n_features, seed=1).requires_grad_(True)
    with torch.no_grad():
        tc.theta.add_(0.01)  # type: ignore[union-attr]  # log θ needs θ > 0
    parametrize.register_parametrization(tc, "theta", tr._Exp())
    st = tr.State(tc, torch.optim.Adam(tc.parameters(), lr=cfg.lr), torch.full((L,), 1.3), torch.full((L,), 0.7))
    st.since_fired = torch.randint(0, 200, (L, cfg.n_features), generator=torch.Generator().manual_seed(2))
    return st


def _batch() -> tr.Batch:
    g = torch.Generator().manual_seed(3)
    return tr.Batch(torch.randn(2 * T, L, D, generator=g), torch.randn(2 * T, L, D, generator=g))


def _params(st: tr.State) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in st.tc.state_dict().items()} | {"since_fired": st.since_fired}


def _spawn(fn, *args) -> None:
    mp.start_processes(fn, args=args, nprocs=2, join=True, start_method="spawn")


def _init(rank: int, tmp: str) -> World:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2)
    return World(rank, 2)


def _exit() -> None:
    """Leave the worker without the interpreter's teardown: a worker aborted in 2 of 46 runs here (SIGABRT,
    "terminate called without an active exception" from gloo's threads), apparently at exit."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _steps_worker(rank: int, tmp: str) -> None:
    world = _init(rank, tmp)
    b = _batch()
    st = _state()  # data parallel: this rank's half of the batch
    dt.dp_step(CFG, st, tr.Batch(b.x[rank * T : (rank + 1) * T], b.y[rank * T : (rank + 1) * T]), 0.5, world)
    save_file(_params(st), f"{tmp}/dp{rank}.safetensors")
    local = dt.shard_state(_state(), CFG, world)  # feature sharded: the whole batch, half of the features
    x = b.x * local.s_in[:, None]
    recon = dt.sharded_reconstruction(local.tc, x)[0].detach()
    dt.sharded_step(CFG, local, b, 0.5)
    full = dt.gather_state(local, CFG, world)
    save_file(_params(full) | {"recon": recon}, f"{tmp}/sh{rank}.safetensors")
    world.close()  # no rank tears gloo down while the other still talks to it (SIGABRT at exit)
    _exit()


def test_dp_step_and_sharded_step_equal_one_process(tmp_path):
    _spawn(_steps_worker, str(tmp_path))
    b = _batch()
    ref = _state()  # one process, the concatenated batch (train.train's step)
    res = tr.loss_fn(CFG, ref, b, 0.5)
    res.loss.backward()
    ref.opt.step()
    ref.since_fired = torch.where(res.fired, 0, ref.since_fired + CFG.batch_tokens)
    want = _params(ref)
    for rank in range(2):
        got = load_file(str(tmp_path / f"dp{rank}.safetensors"))
        for k, v in want.items():
            assert (got[k] - v).abs().max() <= 1e-6, (rank, k)
    # sharded: reconstruction equals the whole transcoder's, and one step equals the dense single-process step
    whole = _state()
    x = b.x * whole.s_in[:, None]
    with torch.no_grad():
        expect = whole.tc(x)
    dense = _state()
    res = tr.loss_fn(CFG, dense, b, 0.5, force_dense=True)
    res.loss.backward()
    dense.opt.step()
    dense.since_fired = torch.where(res.fired, 0, dense.since_fired + CFG.batch_tokens)
    want = _params(dense)
    for rank in range(2):
        got = load_file(str(tmp_path / f"sh{rank}.safetensors"))
        assert (got["recon"] - expect).abs().max() <= 1e-5
        for k, v in want.items():
            assert (got[k] - v).abs().max() <= 1e-6, (rank, k)


def _tiny():
    torch.manual_seed(0)
    model = random_model(tiny_config("llama"), dtype=torch.float32)
    stream = torch.randint(3, 50, (4000,), generator=torch.Generator().manual_seed(4), dtype=torch.int32)
    return model, stream


TRAIN = tr.TrainConfig(n_features=8, tokens=128, batch_tokens=32, seq_len=9, buffer_tokens=64, checkpoint_every=2,
                       warmup_steps=0, lr=1e-3)  # fmt: skip


def _train_worker(rank: int, tmp: str) -> None:
    from pathlib import Path

    world = _init(rank, tmp)
    model, stream = _tiny()
    for sharded in (False, True):
        out = Path(tmp) / ("sh" if sharded else "dp")
        assert dt.train_distributed(model, stream, TRAIN, out, world, shard_features=sharded, stop_after=2,
                                    progress=False) is None  # fmt: skip
    full = dt.train_distributed(model, stream, TRAIN, Path(tmp) / "shfull", world, shard_features=True, progress=False)
    assert full is not None and full.steps == 4
    world.close()  # no rank tears gloo down while the other still talks to it (SIGABRT at exit)
    _exit()


def test_checkpoint_of_two_ranks_resumes_on_one(tmp_path):
    _spawn(_train_worker, str(tmp_path))  # data parallel into dp/, then feature sharded into sh/, 2 steps each
    model, stream = _tiny()
    tr.train(model, stream, TRAIN, tmp_path / "one", stop_after=2, progress=False)
    one = tr.load_checkpoint(tmp_path / "one" / tr.CHECKPOINT, TRAIN)
    for sharded in (False, True):
        out = tmp_path / ("sh" if sharded else "dp")
        ckpt = tr.load_checkpoint(out / tr.CHECKPOINT, TRAIN)
        assert ckpt.step == 2 and ckpt.tc.cfg.n_features == 8 and ckpt.since_fired.shape == (3, 8)
        if sharded:  # same data on every rank: the 2-rank checkpoint is the one-process run's (dense vs sparse path)
            for (k, a), b in zip(one.tc.state_dict().items(), ckpt.tc.state_dict().values(), strict=True):
                assert (a - b).abs().max() <= 1e-5, k
        res = tr.train(model, stream, TRAIN, out, progress=False)  # resumes at step 2 in one process
        assert res is not None and res.steps == 4 and (out / "training.json").exists()
    # a whole sharded run reports the whole transcoder's L0 and dead share, as one process does
    info = json.loads((tmp_path / "shfull" / "training.json").read_text())
    whole = tr.train(model, stream, TRAIN, tmp_path / "onefull", progress=False)
    assert whole is not None and info["world_size"] == 2 and info["shard_features"]
    assert info["final"]["l0"] == pytest.approx(whole.final["l0"], abs=0.1)
    assert info["final"]["dead"] == pytest.approx(whole.final["dead"])


def test_shard_features_needs_torchrun(tmp_path, capsys, monkeypatch):
    from tracer.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["transcoders", "train", "--out", str(tmp_path / "o"), "--shard-features"]) == 2
    assert "needs several ranks" in capsys.readouterr().err and not (tmp_path / "o").exists()
