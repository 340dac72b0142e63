"""Distributed CLT/PLT training on torch.distributed (launched by torchrun): data parallel, or features sharded.

1. data parallel (the default under torchrun): every rank holds the whole transcoder. Step s's global batch of
   batch_tokens tokens is split into world_size equal parts; rank r reads its part from its own activation buffers
   (its j-th buffer is buffer j·W + r), so each rank harvests only its shard of the corpus. After backward the
   gradients are averaged with one all-reduce: every loss term is a mean over tokens, so a step equals a
   single-process step on the concatenated batch (TopK's AuxK term is normalised per batch: close, not equal).
   The masks of features that fired are OR-reduced, so the dead-feature counters agree on every rank.
2. feature sharded (--shard-features): rank r owns features [r·F/W, (r+1)·F/W) of every layer (encoder rows,
   biases, thresholds, decoder rows and their Adam state); b_dec and W_skip are replicated. Every rank reads the
   same batch; the partial reconstructions are summed by an all-reduce whose backward is the identity (each rank
   already holds the gradient of the replicated loss), as the circuit-tracing paper does for large CLTs. The
   sharded loss is computed densely (not TopK: its top-k spans every shard).
3. init: each rank initialises as the single-process trainer does, then takes rank 0's weights and normalisation
   (data parallel: broadcast; sharded: broadcast, then its slice).
4. checkpoints: rank 0 writes the single-process format (train.save_checkpoint; sharded state gathered first),
   so a run resumes on any number of ranks, one included (`tracer transcoders train` without torchrun).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.utils import parametrize
from tqdm import tqdm

from tracer.distributed import World
from tracer.errors import ConfigError
from tracer.io import atomic_write_text
from tracer.models import Transformer
from transcoders import train as tr
from transcoders.clt import Transcoder
from transcoders.config import ActivationKind
from transcoders.data import ActivationSource, Batch
from transcoders.formats import TranscoderFormat, save_transcoders
from transcoders.train import CHECKPOINT, State, StepOut, TrainConfig, TrainResult

log = logging.getLogger(__name__)
SHARD_DIM = {"W_enc": 1, "b_enc": 1, "parametrizations.theta.original": 1}  # and W_dec.{s}: 0; others replicated


def shard_dim(name: str) -> int | None:
    return 0 if name.startswith("W_dec.") else SHARD_DIM.get(name)


# 1. data parallel


class RankSource:
    """Rank r's view of an ActivationSource: its j-th buffer is buffer j·W + r, and a step's batch is
    batch_tokens / W tokens of it (W = 1: exactly ActivationSource.batch)."""

    def __init__(self, src: ActivationSource, world: World) -> None:
        self.src, self.world = src, world

    def buffer(self, j: int) -> Batch:
        return self.src.buffer(j * self.world.size + self.world.rank)

    def batch(self, step: int, batch_tokens: int) -> Batch:
        local = batch_tokens // self.world.size
        per = self.src.buffer_tokens // local
        if per == 0:
            raise ConfigError(f"a rank's batch of {local} tokens exceeds the buffer of {self.src.buffer_tokens}")
        b = self.buffer(step // per)
        j = (step % per) * local
        return Batch(b.x[j : j + local].float(), b.y[j : j + local].float())


def average_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Mean of every parameter's gradient over the ranks, in one all-reduce (a parameter without a gradient on some
    rank counts zeros there; one without a gradient anywhere keeps none, as Adam then skips it)."""
    if not world.distributed:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in live])  # type: ignore[union-attr]
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for p in live:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))  # type: ignore[union-attr]
        offset += n


def any_rank(mask: torch.Tensor, world: World) -> torch.Tensor:
    if not world.distributed:
        return mask
    m = mask.to(torch.uint8)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return m.bool()


def dp_step(cfg: TrainConfig, st: State, batch: Batch, lam: float, world: World) -> StepOut:
    """One data-parallel optimiser step on this rank's part of the global batch."""
    res = tr.loss_fn(cfg, st, batch, lam)
    st.opt.zero_grad(set_to_none=True)
    res.loss.backward()
    average_gradients(list(st.tc.parameters()), world)
    st.opt.step()
    fired = any_rank(res.fired, world)
    with torch.no_grad():
        st.since_fired = torch.where(fired, 0, st.since_fired + cfg.batch_tokens)
    return res._replace(fired=fired)


# 2. feature sharded


class _SumAcrossRanks(torch.autograd.Function):
    """Forward: all-reduce sum of the ranks' partial results; backward: identity (the loss is replicated)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = x.clone()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def sharded_reconstruction(tc: Transcoder, x_TLD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reconstruction [T, L, D] of the whole transcoder, this shard's pre-activations and activations [T, L, F/W])
    from this rank's shard `tc`: Σ_ranks (decode - b_dec) + b_dec + skip."""
    pre = tc.pre_activations(x_TLD)
    acts = tc.activations(pre)
    support = None
    if tc.theta is not None:  # the threshold's straight-through gradient needs the entries just below θ too
        support = (acts != 0) | (pre > tc.theta - tc.cfg.jumprelu_bandwidth / 2)
    partial = tc.decode(acts, support) - tc.b_dec
    return _SumAcrossRanks.apply(partial) + tc.b_dec + tc.skip(x_TLD), pre, acts  # type: ignore[operator]


def sharded_step(cfg: TrainConfig, st: State, b: Batch, lam: float) -> StepOut:
    """One optimiser step of this rank's feature shard; the loss terms are those of train.loss_fn's dense path."""
    tc = st.tc
    x, y = b.x * st.s_in[:, None], b.y * st.s_out[:, None]
    T = x.shape[0]
    y_hat, pre, acts = sharded_reconstruction(tc, x)
    err = (y - y_hat).pow(2)
    loss = err.sum() / T
    norms = tc.decoder_norms()
    loss = loss + lam * torch.tanh(cfg.tanh_c * acts * norms).sum() / T
    dead = st.since_fired >= cfg.dead_window
    if tc.theta is not None and cfg.preact > 0 and bool(dead.any()):
        loss = loss + cfg.preact * (torch.relu(tc.theta - pre) * norms * dead).sum() / T
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    st.opt.step()
    fired = (acts > 0).any(0)
    with torch.no_grad():
        st.since_fired = torch.where(fired, 0, st.since_fired + cfg.batch_tokens)
    nmse = (err.sum((0, 2)) / (y - y.mean(0)).pow(2).sum((0, 2)).clamp_min(1e-12)).mean().item()
    return StepOut(loss.detach(), fired, float((acts > 0).sum()) / T, nmse)


def _new_transcoder(cfg) -> Transcoder:
    tc = Transcoder(cfg)
    if tc.theta is not None:
        with torch.no_grad():
            tc.theta.fill_(1.0)
        parametrize.register_parametrization(tc, "theta", tr._Exp())
    return tc


def _names(tc: Transcoder) -> list[str]:
    return [n for n, _ in tc.named_parameters()]


def shard_state(full: State, cfg: TrainConfig, world: World) -> State:
    """This rank's slice of a whole training state (weights, Adam moments, dead counters)."""
    F, W = full.tc.cfg.n_features, world.size
    if F % W:
        raise ConfigError(f"--features {F} must be a multiple of the {W} ranks to shard them")
    lo, hi = world.rank * F // W, (world.rank + 1) * F // W

    def piece(name: str, t: torch.Tensor) -> torch.Tensor:
        d = shard_dim(name)
        return t.clone() if d is None or t.dim() == 0 else t.narrow(d, lo, hi - lo).clone()

    st = _mapped(full, hi - lo, piece, cfg)
    st.step, st.since_fired = full.step, full.since_fired[:, lo:hi].clone()
    return st


def gather_state(st: State, cfg: TrainConfig, world: World) -> State:
    """The whole training state from every rank's shard (collective: every rank calls it)."""

    def whole(name: str, t: torch.Tensor) -> torch.Tensor:
        d = shard_dim(name)
        if d is None or t.dim() == 0:
            return t.detach().clone()
        parts = [torch.empty_like(t) for _ in range(world.size)]
        dist.all_gather(parts, t.detach().contiguous())
        return torch.cat(parts, d)

    full = _mapped(st, st.tc.cfg.n_features * world.size, whole, cfg)
    full.step, full.since_fired = st.step, whole("b_enc", st.since_fired)
    return full


def _mapped(src: State, n_features: int, fn: Callable[[str, torch.Tensor], torch.Tensor], cfg: TrainConfig) -> State:
    """A State of `n_features` per layer whose parameters and Adam moments are `fn(parameter name, tensor)` of
    `src`'s (a shard of them, or all shards gathered); step and fired counters are left to the caller."""
    tc = _new_transcoder(src.tc.cfg.model_copy(update={"n_features": n_features}))
    tc.load_state_dict({k: fn(k, v) for k, v in src.tc.state_dict().items()})
    opt = torch.optim.Adam(tc.parameters(), lr=cfg.lr)
    osd, names = src.opt.state_dict(), _names(src.tc)
    opt.load_state_dict({"state": {i: {k: fn(names[i], v) for k, v in s.items()} for i, s in osd["state"].items()},
                         "param_groups": osd["param_groups"]})  # fmt: skip
    return State(tc, opt, src.s_in, src.s_out)


# 3. init, and the loop


def broadcast_state(st: State) -> None:
    """Rank 0's weights and normalisation on every rank (a fresh start: Adam has no state yet)."""
    with torch.no_grad():
        for t in (*st.tc.parameters(), st.s_in, st.s_out):
            dist.broadcast(t.data, src=0)


def train_distributed(model: Transformer, stream: torch.Tensor, cfg: TrainConfig, out: Path, world: World,
                      name: str = "", content_hash: str = "", cache_dir: Path | None = None,
                      shard_features: bool = False, stop_after: int | None = None,
                      progress: bool = True) -> TrainResult | None:  # fmt: skip
    """train.train over the torchrun world (module docstring); stop_after simulates a kill (returns None)."""
    W = world.size
    if shard_features and cfg.activation == ActivationKind.TOPK:
        raise ConfigError("--shard-features does not support TopK (its top-k spans every shard)")
    if not shard_features and cfg.batch_tokens % W:
        raise ConfigError(f"--batch-tokens {cfg.batch_tokens} must be a multiple of the {W} ranks")
    n_unique = -(-cfg.data_tokens // cfg.buffer_tokens) if cfg.data_tokens else None
    src = ActivationSource(model, stream, cfg.input_hook, cfg.seq_len, cfg.buffer_tokens, cfg.seed, cache_dir,
                           n_unique=n_unique)  # fmt: skip
    data = src if shard_features else RankSource(src, world)
    n_steps = cfg.tokens // cfg.batch_tokens
    if n_steps == 0:
        raise ConfigError(f"{cfg.tokens} tokens make no batch of {cfg.batch_tokens}")
    ckpt = out / CHECKPOINT
    fresh = not ckpt.exists()
    st = tr.init_state(cfg, model, data, name, content_hash) if fresh else tr.load_checkpoint(ckpt, cfg)  # type: ignore[arg-type]
    if fresh and world.distributed:
        broadcast_state(st)
    if shard_features:
        st = shard_state(st, cfg, world)
    first, t0, stats = st.step, time.perf_counter(), {"nmse": float("nan"), "l0": float("nan"), "dead": 0.0}
    bar = tqdm(total=n_steps, initial=st.step, disable=not progress or not world.is_main, unit="step",
               dynamic_ncols=True)  # fmt: skip
    while st.step < n_steps:
        if stop_after is not None and st.step - first >= stop_after:
            bar.close()
            return None
        for g in st.opt.param_groups:
            g["lr"] = tr.lr_at(cfg, st.step, n_steps)
        lam = tr.sparsity_at(cfg, st.step, n_steps)
        b = data.batch(st.step, cfg.batch_tokens)
        res = sharded_step(cfg, st, b, lam) if shard_features else dp_step(cfg, st, b, lam, world)
        st.step += 1
        bar.update()
        if st.step % 10 == 0 or st.step == n_steps:
            stats = _stats(res, st, cfg, world if shard_features else None)
            bar.set_postfix(nmse=f"{stats['nmse']:.3f}", l0=f"{stats['l0']:.1f}", dead=f"{stats['dead']:.1%}")
        if st.step % cfg.checkpoint_every == 0 or st.step == n_steps:
            _checkpoint(st, cfg, ckpt, world, shard_features)
    bar.close()
    return _finish(st, cfg, out, world, shard_features, first, time.perf_counter() - t0, stats)


def _stats(res: StepOut, st: State, cfg: TrainConfig, shards: World | None) -> dict[str, float]:
    """nmse, l0 and dead fraction of the whole transcoder (summed over the feature shards when sharded)."""
    l0_dead = torch.tensor([res.l0, float((st.since_fired >= cfg.dead_window).float().sum())], dtype=torch.float64)
    if shards is not None and shards.distributed:
        dist.all_reduce(l0_dead)
    n = st.since_fired.numel() * (shards.size if shards is not None else 1)
    return {"nmse": res.nmse, "l0": float(l0_dead[0]), "dead": float(l0_dead[1]) / n}


def _checkpoint(st: State, cfg: TrainConfig, path: Path, world: World, sharded: bool) -> None:
    """4. Rank 0 writes the single-process checkpoint format."""
    full = gather_state(st, cfg, world) if sharded else st
    if world.is_main:
        tr.save_checkpoint(full, cfg, path)
    world.barrier()


def _finish(st: State, cfg: TrainConfig, out: Path, world: World, sharded: bool, first: int, secs: float,
            stats: dict) -> TrainResult:  # fmt: skip
    full = gather_state(st, cfg, world) if sharded else st
    tps = (st.step - first) * cfg.batch_tokens / max(secs, 1e-9)
    tc = tr.finished(full, cfg.dtype)
    if world.is_main:
        save_transcoders(tc, out, TranscoderFormat.OURS)
        info = {"train": cfg.model_dump(mode="json"), "steps": st.step, "seconds_this_run": secs, "tokens_per_s": tps,
                "final": stats, "world_size": world.size, "shard_features": sharded}  # fmt: skip
        atomic_write_text(out / "training.json", json.dumps(info, indent=2) + "\n")
        log.info("trained %d steps on %d ranks in %.0f s (%.0f tokens/s)", st.step - first, world.size, secs, tps)
    world.barrier()
    return TrainResult(tc, st.step, secs, tps, stats)
