"""Train a CLT or PLT on activations harvested from the model (CPU-friendly, resumable).

1. Init: scalar normalisation factors per layer from buffer 0 (E‖x‖ = E‖y‖ = √D after scaling); weights
   W_enc ~ U(±1/√F), W_dec ~ U(±1/√(L·D)), b_dec = mean target, θ = θ₀; θ is trained as exp(log θ).
2. Step: batch -> pre-activations -> activations -> reconstruction; loss = Σ_layers ‖y - ŷ‖² (mean over tokens)
   + λ(t)·Σ tanh(c·‖W_dec,f‖·a_f) (JumpReLU/ReLU; λ ramped linearly from 0) + μ·Σ ReLU(θ - pre)·‖W_dec,f‖ over dead
   features (JumpReLU) or the AuxK loss (TopK); Adam with linear warm-up and linear decay over the final part.
   With few candidate entries the encoder and decoder run sparsely (transcoders.sparse_step).
3. Track: steps since each feature last fired (dead = none in a window); tqdm shows NMSE, L0 and dead fraction.
4. Checkpoint every N steps, atomically: weights, Adam state, step, RNG, normalisation, dead counters; the data
   position is the step itself (buffers are rebuilt from their index), so a restart continues exactly.
5. Finish: θ = exp(log θ) made plain, normalisation folded into the weights, saved in our format.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import parametrize
from tqdm import tqdm

from tracer.errors import ConfigError
from tracer.io import atomic_save_safetensors, atomic_write_text
from tracer.models import HookPoint, Transformer
from transcoders.activations import jumprelu
from transcoders.clt import Transcoder
from transcoders.config import ActivationKind, DType, TranscoderConfig, TranscoderKind
from transcoders.data import ActivationSource, Batch, note
from transcoders.formats import TranscoderFormat, save_transcoders
from transcoders.layers import embed
from transcoders.sparse_step import EntryPre, candidates

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.safetensors"


class TrainConfig(BaseModel):
    """Every knob of a training run (stored in the checkpoint; a resume must use the same values)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: TranscoderKind = Field(default=TranscoderKind.CLT, description="clt or plt")
    n_features: int = Field(default=1024, gt=0, description="features per layer")
    activation: ActivationKind = Field(default=ActivationKind.JUMPRELU, description="feature nonlinearity")
    topk_k: int = Field(default=0, ge=0, description="TopK: features kept per layer and token")
    input_hook: HookPoint = Field(default=HookPoint.MLP_IN, description="hook the encoders read (mlp_in or resid_mid)")
    skip: bool = Field(default=False, description="train a linear skip connection W_skip too")
    tokens: int = Field(default=1_000_000, gt=0, description="training tokens in total")
    batch_tokens: int = Field(default=1024, gt=0, description="tokens per optimiser step")
    seq_len: int = Field(default=128, ge=2, description="harvest sequence length incl. BOS")
    buffer_tokens: int = Field(default=1 << 18, gt=0, description="tokens per shuffled activation buffer")
    data_tokens: int = Field(default=0, ge=0, description="distinct tokens to harvest, cycled over (0 = tokens)")
    lr: float = Field(default=1e-3, gt=0, description="Adam learning rate after warm-up")
    warmup_steps: int = Field(default=50, ge=0, description="linear learning-rate warm-up")
    decay_frac: float = Field(default=0.2, ge=0, le=1, description="final fraction of steps with linear decay to 0")
    sparsity: float = Field(default=1.0, ge=0, description="final λ of the tanh sparsity penalty")
    sparsity_ramp_frac: float = Field(
        default=0.5, ge=0, le=1, description="fraction of steps over which λ ramps from 0"
    )
    tanh_c: float = Field(default=4.0, gt=0, description="c in tanh(c·‖W_dec‖·a)")
    preact: float = Field(default=3e-6, ge=0, description="μ of the pre-activation loss on dead features (JumpReLU)")
    aux_k: int = Field(default=0, ge=0, description="TopK AuxK: dead features used per layer (0 = d_model/2)")
    aux_coef: float = Field(default=1 / 32, ge=0, description="TopK AuxK loss weight")
    dead_window: int = Field(default=1 << 18, gt=0, description="a feature silent for this many tokens counts as dead")
    threshold_init: float = Field(default=0.03, gt=0, description="initial JumpReLU threshold (normalised units)")
    bandwidth: float = Field(default=0.1, gt=0, description="JumpReLU STE rectangle-kernel bandwidth")
    checkpoint_every: int = Field(default=500, gt=0, description="steps between checkpoints")
    seed: int = Field(default=0, description="seed of the initialisation and the token shuffling")
    dtype: DType = Field(default=DType.FLOAT32, description="dtype of the saved transcoders")
    layers: tuple[int, ...] | None = Field(default=None, description=(
        "train only these layers, e.g. 0-3,7 (default: all); only their activations are harvested (buffers shrink "
        "by that share). The saved set has the model's layer count, zero weights at the other layers (no features "
        "there: a trace puts their whole MLP output in the error node) and config.json lists the trained layers. "
        "A CLT's features of a selected layer then write to the later selected layers only"))  # fmt: skip


class TrainResult(NamedTuple):
    transcoder: Transcoder  # folded, plain (raw model units)
    steps: int
    seconds: float  # wall time of this process's training steps, harvest included
    tokens_per_s: float
    final: dict[str, float]  # last logged nmse, l0, dead


class _Exp(nn.Module):
    """θ = exp(log θ): the parametrisation the optimiser sees."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.exp()

    def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x.log()


class State:
    """Everything a checkpoint holds."""

    def __init__(self, tc: Transcoder, opt: torch.optim.Adam, s_in: torch.Tensor, s_out: torch.Tensor) -> None:
        self.tc, self.opt, self.s_in, self.s_out = tc, opt, s_in, s_out
        self.step = 0
        self.since_fired = torch.zeros(tc.cfg.n_layers, tc.cfg.n_features, dtype=torch.long)


# 1. Init
def _scales(b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    d = b.x.shape[-1]
    return (math.sqrt(d) / b.x.float().norm(dim=-1).mean(0), math.sqrt(d) / b.y.float().norm(dim=-1).mean(0))


def init_state(cfg: TrainConfig, model: Transformer, src: ActivationSource, name: str, content_hash: str,
               init_from: Path | None = None) -> State:  # fmt: skip
    """Fresh training state; `init_from` (a checkpoint of a run with the same shapes) supplies the initial
    weights instead of the random ones (a warm start, e.g. from a CLT of an earlier checkpoint of the model)."""
    first = src.buffer(0)
    s_in, s_out = _scales(first)
    mc = model.cfg
    n_layers = mc.n_layers if cfg.layers is None else len(cfg.layers)  # a subset trains a set of its own size
    tcfg = TranscoderConfig(kind=cfg.kind, n_layers=n_layers, d_model=mc.d_model, n_features=cfg.n_features,
                            activation=cfg.activation, topk_k=cfg.topk_k, input_hook=cfg.input_hook, skip=cfg.skip,
                            model_name=name, model_hash=content_hash, jumprelu_bandwidth=cfg.bandwidth)  # fmt: skip
    torch.manual_seed(cfg.seed)
    tc = Transcoder(tcfg)
    L, F, D = n_layers, cfg.n_features, mc.d_model
    with torch.no_grad():
        tc.W_enc.uniform_(-1 / math.sqrt(F), 1 / math.sqrt(F))
        assert tc.W_dec is not None
        for w in tc.W_dec:
            w.uniform_(-1 / math.sqrt(L * D), 1 / math.sqrt(L * D))
        tc.b_dec.copy_((first.y.float() * s_out[:, None]).mean(0))
        if tc.theta is not None:
            tc.theta.fill_(cfg.threshold_init)
    if tc.theta is not None:
        parametrize.register_parametrization(tc, "theta", _Exp())
    if init_from is not None:
        try:
            warm = load_file(str(init_from))
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise ConfigError(f"cannot warm-start from {init_from}: {(str(e).splitlines() or [e])[0]}") from None
        try:
            tc.load_state_dict({k[3:]: v for k, v in warm.items() if k.startswith("tc.")})
        except RuntimeError as e:
            raise ConfigError(f"cannot warm-start from {init_from}: {str(e).splitlines()[0]}") from None
    opt = torch.optim.Adam(tc.parameters(), lr=cfg.lr)
    return State(tc, opt, s_in, s_out)


# 2. Step
def lr_at(cfg: TrainConfig, step: int, n_steps: int) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    decay_start = n_steps * (1 - cfg.decay_frac)
    decay = min(1.0, (n_steps - step) / (n_steps - decay_start)) if step >= decay_start and cfg.decay_frac else 1.0
    return cfg.lr * warm * decay


def sparsity_at(cfg: TrainConfig, step: int, n_steps: int) -> float:
    ramp = cfg.sparsity_ramp_frac * n_steps
    return cfg.sparsity * (min(1.0, step / ramp) if ramp > 0 else 1.0)


class StepOut(NamedTuple):
    loss: torch.Tensor
    fired: torch.Tensor  # [L, F] bool: features active on this batch
    l0: float  # mean active features per token (all layers)
    nmse: float  # mean over layers of Σ‖y-ŷ‖² / Σ‖y-ȳ‖² on this batch


def _aux_k_loss(cfg: TrainConfig, st: State, pre: torch.Tensor, resid: torch.Tensor, dead: torch.Tensor):
    """AuxK (TopK): the top aux_k dead features per layer should reconstruct the residual error."""
    tc = st.tc
    k = min(cfg.aux_k or tc.cfg.d_model // 2, int(dead.sum(1).min()))
    if k == 0:
        return pre.new_zeros(())
    masked = pre.masked_fill(~dead, float("-inf"))
    vals, idx = masked.topk(k, dim=-1)
    aux = torch.zeros_like(pre).scatter(-1, idx, vals.clamp_min(0))
    rec = tc.decode(aux) - tc.b_dec
    return (resid - rec).pow(2).sum() / resid.pow(2).sum().clamp_min(1e-12)


def _preact_loss(cfg: TrainConfig, tc: Transcoder, x: torch.Tensor, norms: torch.Tensor, dead: torch.Tensor):
    """Σ ReLU(θ - pre)·‖W_dec‖ over dead features (pre recomputed per layer for those features only)."""
    total = x.new_zeros(())
    for s in range(tc.cfg.n_layers):
        idx = dead[s].nonzero().squeeze(1)
        if len(idx):
            pre = x[:, s] @ tc.W_enc[s, idx].T + tc.b_enc[s, idx]
            total = total + (torch.relu(tc.theta[s, idx] - pre) * norms[s, idx]).sum()  # type: ignore[index]
    return total / x.shape[0]


def loss_fn(cfg: TrainConfig, st: State, b: Batch, lam: float, force_dense: bool = False) -> StepOut:
    """One batch's loss. Sparse path (few candidates): only candidate entries are computed with gradients, so
    encoder and decoder cost ∝ candidates; dense path otherwise (early training, TopK)."""
    tc = st.tc
    x, y = b.x * st.s_in[:, None], b.y * st.s_out[:, None]
    T, L, F = x.shape[0], tc.cfg.n_layers, tc.cfg.n_features
    sparse = cfg.activation != ActivationKind.TOPK and not force_dense
    entries = candidates(tc, x, cfg.bandwidth) if sparse else None
    pre = acts = None
    if entries is not None:
        t, ly, f, raw = entries
        p = EntryPre.apply(tc.W_enc, x.transpose(0, 1), raw, ly, t, f) + tc.b_enc[ly, f]
        vals = jumprelu(p, tc.theta[ly, f], cfg.bandwidth) if tc.theta is not None else torch.relu(p)
        y_hat = tc.decode_entries(T, t, ly, f, vals) + tc.skip(x)
        on = vals.detach() > 0
        fired = torch.zeros(L, F, dtype=torch.bool).index_put_((ly[on], f[on]), torch.tensor(True))
        l0 = float(on.sum()) / T
    else:
        pre = tc.pre_activations(x)
        acts = tc.activations(pre)
        support = None
        if cfg.activation == ActivationKind.JUMPRELU:  # the threshold's STE needs gradients just below θ too
            support = (acts != 0) | (pre > tc.theta - cfg.bandwidth / 2)  # type: ignore[operator]
        y_hat = tc.decode(acts, support) + tc.skip(x)
        fired, l0 = (acts > 0).any(0), float((acts > 0).sum()) / T
    err = (y - y_hat).pow(2)
    loss = err.sum() / T
    nmse = (err.sum((0, 2)) / (y - y.mean(0)).pow(2).sum((0, 2)).clamp_min(1e-12)).mean().item()
    dead = st.since_fired >= cfg.dead_window
    if cfg.activation == ActivationKind.TOPK:
        assert pre is not None
        return StepOut(loss + cfg.aux_coef * _aux_k_loss(cfg, st, pre, (y - y_hat).detach(), dead), fired, l0, nmse)
    norms = tc.decoder_norms()  # [L, F]
    if entries is not None:
        loss = loss + lam * torch.tanh(cfg.tanh_c * vals * norms[ly, f]).sum() / T
    else:
        assert acts is not None
        loss = loss + lam * torch.tanh(cfg.tanh_c * acts * norms).sum() / T
    if cfg.activation == ActivationKind.JUMPRELU and cfg.preact > 0 and bool(dead.any()):
        loss = loss + cfg.preact * _preact_loss(cfg, tc, x, norms, dead)
    return StepOut(loss, fired, l0, nmse)


# 4. Checkpoints
def save_checkpoint(st: State, cfg: TrainConfig, path: Path) -> None:
    tensors = {f"tc.{k}": v.detach().clone() for k, v in st.tc.state_dict().items()}
    osd = st.opt.state_dict()
    for i, s in osd["state"].items():
        tensors |= {f"opt.{i}.{k}": v.clone() for k, v in s.items()}
    tensors |= {"s_in": st.s_in, "s_out": st.s_out, "since_fired": st.since_fired, "rng": torch.get_rng_state()}
    meta = {"train": cfg.model_dump_json(), "transcoder": st.tc.cfg.model_dump_json(), "step": str(st.step),
            "param_groups": json.dumps(osd["param_groups"])}  # fmt: skip
    atomic_save_safetensors(tensors, path, metadata=meta)


def load_checkpoint(path: Path, cfg: TrainConfig) -> State:
    """Resume from a checkpoint; a truncated or corrupt one is one ConfigError line (not a traceback)."""
    from safetensors import SafetensorError

    try:
        return _load_checkpoint(path, cfg)
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"checkpoint {path} is truncated or corrupt ({why}); delete it to start over") from None


def _load_checkpoint(path: Path, cfg: TrainConfig) -> State:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    saved = TrainConfig.model_validate_json(meta["train"])
    differ = [k for k in TrainConfig.model_fields if k != "checkpoint_every" and getattr(saved, k) != getattr(cfg, k)]
    if differ:
        raise ConfigError(f"{path} was made with other settings ({', '.join(differ)}); use them or delete it")
    t = load_file(str(path))
    tc = Transcoder(TranscoderConfig.model_validate_json(meta["transcoder"]))
    if tc.theta is not None:
        with torch.no_grad():
            tc.theta.fill_(1.0)
        parametrize.register_parametrization(tc, "theta", _Exp())
    tc.load_state_dict({k[3:]: v for k, v in t.items() if k.startswith("tc.")})
    opt = torch.optim.Adam(tc.parameters(), lr=cfg.lr)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    st = State(tc, opt, t["s_in"], t["s_out"])
    st.step, st.since_fired = int(meta["step"]), t["since_fired"]
    torch.set_rng_state(t["rng"])
    return st


# 5. Finish
def finished(st: State, dtype: DType) -> Transcoder:
    """A plain copy in raw model units: θ = exp(log θ) stored directly, normalisation folded in."""
    tc = copy.deepcopy(st.tc)
    if parametrize.is_parametrized(tc, "theta"):
        parametrize.remove_parametrizations(tc, "theta", leave_parametrized=True)
    tc.fold_scales(st.s_in, st.s_out)
    tc = tc.to(dtype.torch).requires_grad_(False)
    tc.cfg = tc.cfg.model_copy(update={"dtype": dtype})
    return tc


def train(model: Transformer, stream: torch.Tensor, cfg: TrainConfig, out: Path, name: str = "",
          content_hash: str = "", cache_dir: Path | None = None, stop_after: int | None = None,
          progress: bool = True, init_from: Path | None = None) -> TrainResult | None:  # fmt: skip
    """Train (or resume from out/checkpoint.safetensors) and save to `out`; stop_after simulates a kill (None)."""
    n_unique = -(-cfg.data_tokens // cfg.buffer_tokens) if cfg.data_tokens else None
    src = ActivationSource(model, stream, cfg.input_hook, cfg.seq_len, cfg.buffer_tokens, cfg.seed, cache_dir,
                           n_unique=n_unique, model_hash=content_hash, progress=progress,
                           layers=cfg.layers)  # fmt: skip
    n_steps = cfg.tokens // cfg.batch_tokens
    if n_steps == 0:
        raise ConfigError(f"{cfg.tokens} tokens make no batch of {cfg.batch_tokens}")
    ckpt = out / CHECKPOINT
    st = load_checkpoint(ckpt, cfg) if ckpt.exists() else init_state(cfg, model, src, name, content_hash, init_from)
    note(f"resuming from {ckpt} at step {st.step} of {n_steps}" if st.step else f"training {n_steps} steps; "
         f"checkpoints every {cfg.checkpoint_every} to {ckpt}", progress)  # fmt: skip
    first, t0, stats = st.step, time.perf_counter(), {"nmse": float("nan"), "l0": float("nan"), "dead": 0.0}
    bar = tqdm(total=n_steps, initial=st.step, disable=not progress, unit="step", dynamic_ncols=True)
    try:
        _loop(cfg, st, src, n_steps, bar, ckpt, stats, first, stop_after)
    except KeyboardInterrupt:
        bar.close()
        last = (st.step // cfg.checkpoint_every) * cfg.checkpoint_every
        where = f"{ckpt} holds step {last}: run the same command to resume from it" if last > first or (
            ckpt.exists()) else "no checkpoint was written yet (--checkpoint-every)"  # fmt: skip
        raise ConfigError(f"interrupted at step {st.step} of {n_steps}; {where}") from None
    if st.step < n_steps:
        return None  # stop_after: like kill -9, nothing written since the last checkpoint
    bar.close()
    secs = time.perf_counter() - t0
    tps = (st.step - first) * cfg.batch_tokens / max(secs, 1e-9)
    tc = finished(st, cfg.dtype)
    if cfg.layers is not None:  # back to the model's layer count, zero at the layers not trained
        tc = embed(tc, cfg.layers, model.cfg.n_layers)
    save_transcoders(tc, out, TranscoderFormat.OURS)
    info = {"train": cfg.model_dump(mode="json"), "steps": st.step, "seconds_this_run": secs, "tokens_per_s": tps,
            "final": stats}  # fmt: skip
    atomic_write_text(out / "training.json", json.dumps(info, indent=2) + "\n")
    log.info("trained %d steps in %.0f s (%.0f tokens/s)", st.step - first, secs, tps)
    return TrainResult(tc, st.step, secs, tps, stats)


def _loop(cfg: TrainConfig, st: State, src: ActivationSource, n_steps: int, bar: tqdm, ckpt: Path,
          stats: dict[str, float], first: int, stop_after: int | None) -> None:  # fmt: skip
    """Steps until n_steps (or stop_after steps of this process); `stats` is updated in place."""
    while st.step < n_steps:
        if stop_after is not None and st.step - first >= stop_after:
            bar.close()
            return
        for g in st.opt.param_groups:
            g["lr"] = lr_at(cfg, st.step, n_steps)
        res = loss_fn(cfg, st, src.batch(st.step, cfg.batch_tokens), sparsity_at(cfg, st.step, n_steps))
        st.opt.zero_grad(set_to_none=True)
        res.loss.backward()
        st.opt.step()
        with torch.no_grad():
            st.since_fired = torch.where(res.fired, 0, st.since_fired + cfg.batch_tokens)
        st.step += 1
        bar.update()
        if st.step % 10 == 0 or st.step == n_steps:
            stats.update(nmse=res.nmse, l0=res.l0, dead=float((st.since_fired >= cfg.dead_window).float().mean()))
            bar.set_postfix(nmse=f"{stats['nmse']:.3f}", l0=f"{stats['l0']:.1f}", dead=f"{stats['dead']:.1%}")
        if st.step % cfg.checkpoint_every == 0 or st.step == n_steps:
            save_checkpoint(st, cfg, ckpt)
