"""Train the bundled language model on natural text mixed with planted-task text.

Algorithm:
1. Data: natural and planted documents, each preceded by `<|endoftext|>`, are tokenized once into token
   streams (cached in `<out>/streams.safetensors`): natural text and one planted stream per training phase
   (`planted.PHASE_MIXES`: facts first, then ever more IOI and induction; phases start at `phase_steps`).
2. Batches: row r of step s is drawn with a generator seeded by (seed, s), so a resumed run sees the same
   data: with probability `random_induction_fracs[phase]` a random-token induction row (`induction_row`: spans
   of random tokens from the whole vocabulary, repeated at random distances, on random tokens or natural text;
   from phase `dense_phase` on `dense_induction_row`: one span repeated over the whole row, so most tokens are
   predictable by copying, which is what makes induction heads form); else from the current phase's planted
   stream (phase 2 reuses phase 1's; the polish phase has its own, the last) with probability
   `planted_fracs[phase]`, else natural text; half the
   stream rows start at a document boundary (`<|endoftext|>` first, as the runtime prepends BOS), half anywhere.
3. Step: AdamW; learning rate warm-up, constant, then linear decay to 10 % (WSD) by step `steps - polish_steps`;
   then the polish phase: `polish_steps` more steps on the last planted stream (IOI after natural-text words),
   the learning rate decaying linearly from `polish_lr` to 10 % of `lr` again; gradient clipping at 1.
4. Checkpoint every `ckpt_every` steps, atomically: weights + AdamW moments (safetensors) and step + loss log
   (JSON) in `<out>/`; `train` resumes from it when present. The loss curve is redrawn as a PNG.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from tracer.errors import ConfigError
from tracer.io import atomic_save_safetensors, atomic_write_text
from tracer.models import ModelConfig, Transformer

DEFAULT_OUT = Path(".cache/lm")


@dataclass(frozen=True)
class TrainConfig:
    n_layers: int = 4  # transformer blocks
    d_model: int = 128  # residual width
    n_heads: int = 4  # attention heads (d_head = d_model / n_heads)
    d_mlp: int = 384  # SwiGLU hidden width
    n_ctx: int = 256  # context window (tokens)
    batch: int = 16  # sequences per step
    steps: int = 6400  # optimizer steps (tokens = steps * batch * n_ctx); induction forms near step 3,000
    polish_steps: int = 400  # last steps: the polish phase (its own planted stream, learning rate from polish_lr)
    polish_lr: float = 8e-4  # learning rate at the polish phase's start (where the main decay had reached 3.25e-4)
    lr: float = 2.5e-3  # peak learning rate
    warmup: int = 100  # linear warm-up steps
    decay_frac: float = 0.25  # final share of steps with linearly decaying learning rate
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only)
    phase_steps: tuple[int, ...] = (1100, 1400)  # steps at which the next phase (planted stream, row mix) begins
    planted_fracs: tuple[float, ...] = (0.6, 0.65, 0.65, 0.65)  # non-random rows' share of planted text, per phase
    random_induction_fracs: tuple[float, ...] = (0.15, 0.15, 0.35, 0.35)  # random-token induction rows, per phase
    dense_phase: int = 2  # first phase whose random-token rows are dense repeats (dense_induction_row)
    ckpt_every: int = 100  # steps between checkpoints (and validation-loss evaluations)
    snapshot_every: int = 500  # steps between kept weight snapshots (`<out>/snapshots/`, for accuracy-vs-steps)
    seed: int = 0  # seeds initialisation and batch sampling
    threads: int = 1  # torch.set_num_threads
    bf16: bool = True  # autocast the forward to bfloat16 (fp32 weights, optimizer and loss): 1.6-1.75x per step here

    def __post_init__(self) -> None:
        n_phases = len(self.phase_steps) + 1 + (self.polish_steps > 0)
        if not 0 <= self.polish_steps < self.steps:
            raise ConfigError(f"polish_steps must be in [0, steps), got {self.polish_steps} of {self.steps}")
        if min(len(self.planted_fracs), len(self.random_induction_fracs)) < n_phases:
            raise ConfigError(f"planted_fracs and random_induction_fracs need one entry per phase ({n_phases})")

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()}
        return cls(**fields)


def model_config(tc: TrainConfig, vocab_size: int, eot: int) -> ModelConfig:
    return ModelConfig(family="llama", n_layers=tc.n_layers, d_model=tc.d_model, n_heads=tc.n_heads,
                       d_mlp=tc.d_mlp, vocab_size=vocab_size, n_ctx=tc.n_ctx, bos_token_id=eot,
                       eos_token_id=eot)  # fmt: skip


# ---- 1. data ----------------------------------------------------------------------------------------------
def tokenize_stream(tok, docs: list[str], eot: int) -> torch.Tensor:
    """[n_tokens] int32: <eot> doc <eot> doc ..."""
    out: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        out.append(eot)
        out.extend(enc.ids)
    return torch.tensor(out, dtype=torch.int32)


# ---- 2. batches -------------------------------------------------------------------------------------------
def induction_row(rng: np.random.Generator, n: int, vocab_size: int, eot: int, natural: np.ndarray) -> np.ndarray:
    """[n] int: `<eot>` + random tokens (or natural text), with 1-4 spans of 2-32 tokens (random tokens from the
    whole vocabulary, or the row's own text) each copied 0 to n/2 tokens further on."""
    if rng.random() < 0.5:
        row = rng.integers(1, vocab_size, n)
    else:
        i = int(rng.integers(len(natural) - n))
        row = natural[i : i + n].astype(np.int64)
    row[0] = eot
    for _ in range(int(rng.integers(1, 5))):
        length, gap = int(rng.integers(2, 33)), int(rng.integers(0, n // 2))
        p1 = int(rng.integers(1, n))
        p2 = p1 + length + gap
        if p2 + length > n:
            continue
        span = rng.integers(1, vocab_size, length) if rng.random() < 0.7 else row[p1 : p1 + length].copy()
        row[p1 : p1 + length] = span
        row[p2 : p2 + length] = span
    return row


def dense_induction_row(rng: np.random.Generator, n: int, vocab_size: int, eot: int) -> np.ndarray:
    """[n] int: `<eot>` + one span of 4-48 random tokens repeated to the end, with 0-16 random tokens between
    copies (so the model must find the earlier occurrence, not count)."""
    span = rng.integers(1, vocab_size, int(rng.integers(4, 49)))
    parts, total = [np.array([eot])], 1
    while total < n:
        gap = rng.integers(1, vocab_size, int(rng.integers(0, 17)) if rng.random() < 0.5 else 0)
        parts += [gap, span]
        total += len(gap) + len(span)
    return np.concatenate(parts)[:n].astype(np.int64)


class Sampler:
    def __init__(self, streams: list[torch.Tensor], eot: int, tc: TrainConfig, vocab_size: int) -> None:
        """streams: [natural, planted phase 0, planted phase 1, ...]."""
        self.streams = [s.numpy() for s in streams]
        self.starts = [np.flatnonzero(s[: len(s) - tc.n_ctx - 1] == eot) for s in self.streams]
        self.tc, self.eot, self.vocab_size = tc, eot, vocab_size

    def batch(self, step: int) -> torch.Tensor:
        """[batch, n_ctx + 1] int64 for optimizer step `step` (deterministic in (seed, step))."""
        tc = self.tc
        rng = np.random.default_rng([tc.seed, step])
        rows = []
        for _ in range(tc.batch):
            phase = phase_at(step, tc)
            if rng.random() < tc.random_induction_fracs[phase]:
                if phase >= tc.dense_phase:
                    rows.append(dense_induction_row(rng, tc.n_ctx + 1, self.vocab_size, self.eot))
                else:
                    rows.append(induction_row(rng, tc.n_ctx + 1, self.vocab_size, self.eot, self.streams[0]))
                continue
            polish = phase > len(tc.phase_steps)
            planted = len(self.streams) - 1 if polish else min(1 + phase, len(self.streams) - 2)
            which = planted if rng.random() < tc.planted_fracs[phase] else 0
            s, starts = self.streams[which], self.starts[which]
            if rng.random() < 0.5:
                i = int(starts[rng.integers(len(starts))])
            else:
                i = int(rng.integers(len(s) - tc.n_ctx - 1))
            rows.append(s[i : i + tc.n_ctx + 1].astype(np.int64))
        return torch.from_numpy(np.stack(rows))


# ---- 3. step ----------------------------------------------------------------------------------------------
def phase_at(step: int, tc: TrainConfig) -> int:
    """Training phase of `step`: one per start in `phase_steps` passed, and the polish phase last."""
    return sum(step >= s for s in tc.phase_steps) + (tc.polish_steps > 0 and step >= tc.steps - tc.polish_steps)


def lr_at(step: int, tc: TrainConfig) -> float:
    """Warm-up, then constant, then linear decay to 10 % over the last `decay_frac` of the main steps (WSD); then
    the polish phase's linear decay from `polish_lr` to 10 % of `lr`.

    Until the decay starts, `steps` may be changed between resumed runs without disturbing the schedule."""
    main = tc.steps - tc.polish_steps
    if step >= main:
        return tc.polish_lr + (0.1 * tc.lr - tc.polish_lr) * (step - main) / tc.polish_steps
    decay_start = int(main * (1 - tc.decay_frac))
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    if step < decay_start:
        return tc.lr
    return tc.lr * (1 - 0.9 * (step - decay_start) / max(1, main - decay_start))


def make_optimizer(model: Transformer, tc: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.95))


def loss_on(model: Transformer, rows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of rows [B, n_ctx + 1]."""
    logits = model(rows[:, :-1]).float()  # the loss in fp32 under bf16 autocast
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))


@torch.no_grad()
def val_loss(model: Transformer, stream: torch.Tensor, n_ctx: int, max_rows: int = 64) -> float:
    """Loss on consecutive non-overlapping windows of a held-out stream."""
    n = min(max_rows, (len(stream) - 1) // n_ctx)
    rows = torch.stack([stream[i * n_ctx : i * n_ctx + n_ctx + 1] for i in range(n)]).long()
    model.eval()
    loss = sum(float(loss_on(model, rows[i : i + 16])) * len(rows[i : i + 16]) for i in range(0, n, 16)) / n
    model.train()
    return loss


# ---- 4. checkpoints ---------------------------------------------------------------------------------------
def save_checkpoint(
    out: Path, model: Transformer, opt: torch.optim.AdamW, step: int, log: list[dict], tc: TrainConfig
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items() if k != "unembed.weight"}
    for i, st in opt.state_dict()["state"].items():
        tensors[f"opt.{i}.exp_avg"], tensors[f"opt.{i}.exp_avg_sq"] = st["exp_avg"], st["exp_avg_sq"]
        tensors[f"opt.{i}.step"] = torch.as_tensor(st["step"]).reshape(1).float()
    atomic_save_safetensors(tensors, out / "ckpt.safetensors")
    atomic_write_text(out / "ckpt.json", json.dumps({"step": step, "log": log}))
    plot_losses(log, out / "loss_curve.png", tc)


def load_checkpoint(out: Path, model: Transformer, opt: torch.optim.AdamW) -> tuple[int, list[dict]]:
    """(next step, loss log); (0, []) when there is no checkpoint."""
    if not (out / "ckpt.json").exists():
        return 0, []
    meta = json.loads((out / "ckpt.json").read_text())
    t = load_file(out / "ckpt.safetensors")
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")}, strict=False)
    sd = opt.state_dict()
    n_params = sum(len(g["params"]) for g in sd["param_groups"])
    sd["state"] = {i: {"step": t[f"opt.{i}.step"][0], "exp_avg": t[f"opt.{i}.exp_avg"],
                       "exp_avg_sq": t[f"opt.{i}.exp_avg_sq"]} for i in range(n_params)}  # fmt: skip
    opt.load_state_dict(sd)
    return meta["step"], meta["log"]


def plot_losses(log: list[dict], path: Path, tc: TrainConfig | None = None) -> None:
    """Train and validation loss against tokens; dotted lines where a planted-mix phase starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    ax.plot([r["tokens"] / 1e6 for r in log], [r["train"] for r in log], label="train (mixed)")
    val = [r for r in log if "val" in r]
    ax.plot([r["tokens"] / 1e6 for r in val], [r["val"] for r in val], "o-", label="held-out natural text")
    if tc is not None:
        for step in tc.phase_steps:
            ax.axvline(step * tc.batch * tc.n_ctx / 1e6, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="tokens (M)", ylabel="cross-entropy (nats)", title="bundled model training")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def train(tc: TrainConfig, natural: torch.Tensor, planted: list[torch.Tensor], heldout: torch.Tensor,
          vocab_size: int, eot: int, out: Path = DEFAULT_OUT, stop_at: int | None = None) -> Transformer:  # fmt: skip
    """Train (or resume) and return the model; checkpoints and the loss curve land in `out`.

    `stop_at` ends this run early at that step (the schedule still follows `tc.steps`); resume later."""
    torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    model = Transformer(model_config(tc, vocab_size, eot))
    for name, p in model.named_parameters():  # GPT-2 style init; residual outputs scaled by depth
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * tc.n_layers) if name.endswith(("o.weight", "down.weight")) else 0.02
            torch.nn.init.normal_(p, std=std)
    opt = make_optimizer(model, tc)
    start, log = load_checkpoint(out, model, opt)
    atomic_write_text(out / "train_config.json", json.dumps(asdict(tc), indent=2))
    sampler = Sampler([natural, *planted], eot, tc, vocab_size)
    t0 = time.time() - max((r["wall_s"] for r in log if "wall_s" in r), default=0.0)  # resumed runs add up
    model.train()
    end = min(tc.steps, stop_at or tc.steps)
    bar = tqdm(range(start, end), initial=start, total=tc.steps, desc="train", mininterval=10)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.bf16):
            loss = loss_on(model, sampler.batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rec = {"step": step + 1, "tokens": (step + 1) * tc.batch * tc.n_ctx, "train": loss.item()}
        if (step + 1) % tc.ckpt_every == 0 or step + 1 in (tc.steps, stop_at):
            rec["val"] = val_loss(model, heldout, tc.n_ctx)
            rec["wall_s"] = time.time() - t0
            log.append(rec)
            save_checkpoint(out, model, opt, step + 1, log, tc)
            if (step + 1) % tc.snapshot_every == 0:
                (out / "snapshots").mkdir(exist_ok=True)
                snap = {k: v for k, v in model.state_dict().items() if k != "unembed.weight"}
                atomic_save_safetensors(snap, out / "snapshots" / f"step{step + 1:05d}.safetensors")
        elif (step + 1) % 10 == 0:
            log.append(rec)
        bar.set_postfix(loss=f"{rec['train']:.3f}", refresh=False)
    model.eval()
    return model
