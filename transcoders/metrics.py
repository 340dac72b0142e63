"""Evaluate a transcoder set against its model.

1. Reconstruction (over `tokens` harvested tokens, BOS positions excluded), per layer: NMSE = Σ‖y-ŷ‖² / Σ‖y-ȳ‖²,
   L0 (mean active features per token), dead % (never fired), dense % (fired on more than 10 % of tokens).
2. Spliced replacement model (every MLP output replaced by the transcoder's, computed from the spliced run's
   own input-hook values, so errors compound; position 0 keeps the real MLP output): CE of the clean, the
   zero-ablated (all MLP outputs 0) and the spliced model; CE recovered = (CE_zero - CE_spliced) /
   (CE_zero - CE_clean); top-1 agreement with the clean model; KL(clean ‖ spliced). Scored on positions ≥ 1.
   A layer subset (`--layers`) reports those layers only and replaces (and zeroes) only their MLP outputs.
3. Report: a pydantic model (JSON), a text table, and a PNG plot of NMSE and L0 per layer.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from tqdm import tqdm

from tracer.io import atomic_write_bytes
from tracer.models import HookPoint, Site, Transformer
from transcoders.clt import Transcoder
from transcoders.config import TranscoderKind
from transcoders.data import harvest, sequences
from transcoders.layers import present

DENSE_FREQ = 0.1  # a feature firing on more than this fraction of tokens counts as dense
CLEAR_MARGIN = 0.1  # top-1 minus top-2 probability of the clean model for a position to count as clear


class LayerStats(BaseModel):
    layer: int
    nmse: float
    l0: float
    dead_pct: float
    dense_pct: float


class SpliceStats(BaseModel):
    tokens: int
    ce_clean: float
    ce_zero_ablated: float
    ce_replaced: float
    ce_recovered: float
    top1_agreement: float
    kl: float
    # positions where the clean model's top-1 probability leads its runner-up by ≥ CLEAR_MARGIN: their share and the
    # agreement there (near-ties flip under any small perturbation and dominate top-1 misses on natural text)
    clear_share: float | None = None
    top1_agreement_clear: float | None = None


class EvalReport(BaseModel):
    model: str
    transcoders: str
    tokens: int
    layers: list[LayerStats]
    mean_nmse: float
    total_l0: float
    dead_pct: float
    dense_pct: float
    splice: SpliceStats


# 1. Reconstruction
class _Acc:
    """Running sums per layer, in float64."""

    def __init__(self, L: int, F: int) -> None:
        self.n = 0
        self.err, self.sq, self.l0 = (
            torch.zeros(L, dtype=torch.float64),
            torch.zeros(L, dtype=torch.float64),
            torch.zeros(L, dtype=torch.float64),
        )
        self.sum: torch.Tensor | None = None
        self.fired = torch.zeros(L, F, dtype=torch.float64)

    def add(self, y: torch.Tensor, y_hat: torch.Tensor, acts: torch.Tensor) -> None:
        y, y_hat = y.double(), y_hat.double()
        self.n += y.shape[0]
        self.err += (y - y_hat).pow(2).sum((0, 2))
        self.sq += y.pow(2).sum((0, 2))
        s = y.sum(0)
        self.sum = s if self.sum is None else self.sum + s
        on = (acts > 0).double()
        self.l0 += on.sum((0, 2))
        self.fired += on.sum(0)

    def layers(self) -> list[LayerStats]:
        assert self.sum is not None
        var = self.sq - self.sum.pow(2).sum(-1) / self.n  # Σ‖y - ȳ‖²
        nmse = self.err / var.clamp_min(1e-30)
        freq = self.fired / self.n
        return [LayerStats(layer=i, nmse=float(nmse[i]), l0=float(self.l0[i] / self.n),
                           dead_pct=100 * float((freq[i] == 0).double().mean()),
                           dense_pct=100 * float((freq[i] > DENSE_FREQ).double().mean()))
                for i in range(len(nmse))]  # fmt: skip


def _needed(tc: Transcoder, layers: tuple[int, ...]) -> tuple[int, ...]:
    """Layers whose activations the reconstruction of `layers` reads: themselves (PLT), or every present layer up
    to the last of them (CLT: sources s ≤ l write to l)."""
    if tc.cfg.kind == TranscoderKind.PLT:
        return layers
    return tuple(s for s in present(tc.cfg) if s <= layers[-1])


@torch.no_grad()
def reconstruction(model: Transformer, tc: Transcoder, tokens: torch.Tensor, batch_seqs: int = 16,
                   progress: bool = False, layers: tuple[int, ...] | None = None) -> list[LayerStats]:  # fmt: skip
    """tokens [n, P] (position 0 = BOS, excluded) -> per-layer statistics (of `layers` only, when given: only
    the layers they need are harvested; the others' inputs are 0 and their rows dropped)."""
    L = tc.cfg.n_layers
    acc = _Acc(L, tc.cfg.n_features)
    need = None if layers is None else _needed(tc, layers)
    for i in _batches(len(tokens), batch_seqs, tokens.shape[1], "eval: reconstruction", progress):
        x, y = harvest(model, tokens[i : i + batch_seqs], tc.cfg.input_hook, batch_seqs, layers=need)
        x, y = x.to(tc.W_enc.dtype), y.to(tc.W_enc.dtype)
        if need is not None:
            x, y = (torch.zeros(t.shape[0], L, t.shape[2], dtype=t.dtype).index_copy_(1, torch.tensor(need), t)
                    for t in (x, y))  # fmt: skip
        acts = tc.encode(x)
        acc.add(y, tc.decode(acts) + tc.skip(x), acts)
    stats = acc.layers()
    return stats if layers is None else [stats[layer] for layer in layers]


# 2. Spliced replacement model
def splice_hooks(tc: Transcoder, layers: tuple[int, ...] | None = None,
                 ) -> Mapping[Site, Callable[[torch.Tensor], torch.Tensor | None]]:  # fmt: skip
    """Hooks replacing every MLP output (or those of `layers`) by the transcoder's output (positions ≥ 1),
    errors compounding."""
    acts: list[torch.Tensor] = []
    xs: list[torch.Tensor] = []

    def read(layer: int):
        def fn(x: torch.Tensor) -> None:
            if layer == 0:
                acts.clear()
                xs.clear()
            flat = x.flatten(0, -2).to(tc.W_enc.dtype)
            xs.append(flat)
            acts.append(tc.encode_layer(flat, layer))

        return fn

    def write(layer: int):
        def fn(out: torch.Tensor) -> torch.Tensor:
            rec = tc.decode_layer(acts, layer)
            if tc.W_skip is not None:
                rec = rec + xs[layer] @ tc.W_skip[layer].T
            rec = rec.view(out.shape).to(out.dtype)
            return torch.cat([out[:, :1], rec[:, 1:]], 1)

        return fn

    hooks = {Site(tc.cfg.input_hook, layer): read(layer) for layer in range(tc.cfg.n_layers)}
    written = range(tc.cfg.n_layers) if layers is None else layers
    return hooks | {Site(HookPoint.MLP_OUT, layer): write(layer) for layer in written}


def _ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Summed next-token CE over positions 1..P-2."""
    return F.cross_entropy(logits[:, 1:-1].flatten(0, 1).double(), tokens[:, 2:].flatten(), reduction="sum")


@torch.no_grad()
def _batches(n: int, step: int, per: int, desc: str, progress: bool):
    """range(0, n, step) with a tqdm bar counting tokens (per tokens per row), for the long evaluations."""
    bar = tqdm(total=n * per, desc=desc, unit="tok", unit_scale=True, disable=not progress, leave=False)
    for i in range(0, n, step):
        yield i
        bar.update(min(step, n - i) * per)
    bar.close()


def splice(model: Transformer, tc: Transcoder, tokens: torch.Tensor, batch_seqs: int = 16,
           progress: bool = False, layers: tuple[int, ...] | None = None) -> SpliceStats:  # fmt: skip
    """Spliced-model figures; with `layers`, only those MLPs are replaced (and zeroed for the baseline)."""
    L = model.cfg.n_layers
    zero = {Site(HookPoint.MLP_OUT, layer): (lambda o: torch.cat([o[:, :1], torch.zeros_like(o[:, 1:])], 1))
            for layer in (range(L) if layers is None else layers)}  # fmt: skip
    tot = torch.zeros(7, dtype=torch.float64)  # ce clean, zero, replaced, agree, kl, clear, agree on clear
    n = 0
    for i in _batches(len(tokens), batch_seqs, tokens.shape[1], "eval: spliced model", progress):
        t = tokens[i : i + batch_seqs]
        clean = model(t)
        with model.hooks.attached(zero):
            zeroed = model(t)
        with model.hooks.attached(splice_hooks(tc, layers)):
            repl = model(t)
        lp_c, lp_r = clean[:, 1:-1].double().log_softmax(-1), repl[:, 1:-1].double().log_softmax(-1)
        agree = lp_c.argmax(-1) == lp_r.argmax(-1)
        top2 = lp_c.topk(2, -1).values.exp()
        clear = top2[..., 0] - top2[..., 1] >= CLEAR_MARGIN
        tot += torch.stack([_ce(clean, t), _ce(zeroed, t), _ce(repl, t), agree.double().sum(),
                            (lp_c.exp() * (lp_c - lp_r)).sum(), clear.double().sum(),
                            (agree & clear).double().sum()])  # fmt: skip
        n += t[:, 2:].numel()
    c, z, r, agree, kl, clear, agree_clear = (tot / n).tolist()
    rec = (z - r) / (z - c) if z != c else float("nan")
    return SpliceStats(tokens=n, ce_clean=c, ce_zero_ablated=z, ce_replaced=r, ce_recovered=rec,
                       top1_agreement=agree, kl=kl, clear_share=clear,
                       top1_agreement_clear=agree_clear / clear if clear else None)  # fmt: skip


# 3. Report
def eval_sequences(tokens: int, ce_tokens: int, seq_len: int) -> tuple[int, int]:
    """How many sequences `evaluate` reads for the statistics and for the splice (consecutive in the stream)."""
    return max(1, -(-tokens // (seq_len - 1))), max(1, -(-ce_tokens // (seq_len - 2)))


def evaluate(model: Transformer, tc: Transcoder, stream: torch.Tensor, tokens: int, ce_tokens: int,
             seq_len: int = 128, model_name: str = "", tc_name: str = "",
             progress: bool = False, layers: tuple[int, ...] | None = None) -> EvalReport:  # fmt: skip
    """Statistics over `tokens` and the splice over `ce_tokens` scored tokens, from disjoint sequences; `layers`
    (sorted): report and splice those layers only (None: every layer)."""
    bos = model.cfg.bos_token_id
    n_stats, n_ce = eval_sequences(tokens, ce_tokens, seq_len)
    stats = reconstruction(model, tc, sequences(stream, 0, n_stats, seq_len, bos), progress=progress,
                           layers=layers)  # fmt: skip
    sp = splice(model, tc, sequences(stream, n_stats, n_ce, seq_len, bos), progress=progress, layers=layers)
    return EvalReport(
        model=model_name, transcoders=tc_name, tokens=n_stats * (seq_len - 1), layers=stats,
        mean_nmse=sum(s.nmse for s in stats) / len(stats), total_l0=sum(s.l0 for s in stats),
        dead_pct=sum(s.dead_pct for s in stats) / len(stats),
        dense_pct=sum(s.dense_pct for s in stats) / len(stats),
        splice=sp,
    )  # fmt: skip


def table(r: EvalReport) -> str:
    rows = [f"{'layer':>5} {'NMSE':>8} {'L0':>8} {'dead %':>7} {'dense %':>8}"]
    rows += [f"{s.layer:>5} {s.nmse:>8.4f} {s.l0:>8.2f} {s.dead_pct:>7.1f} {s.dense_pct:>8.2f}" for s in r.layers]
    rows.append(f"{'all':>5} {r.mean_nmse:>8.4f} {r.total_l0:>8.2f} {r.dead_pct:>7.1f} {r.dense_pct:>8.2f}")
    s = r.splice
    rows.append(f"tokens {r.tokens:,}; spliced model over {s.tokens:,} tokens: CE clean {s.ce_clean:.4f}, "
                f"zero-ablated {s.ce_zero_ablated:.4f}, replaced {s.ce_replaced:.4f}, recovered {s.ce_recovered:.4f}, "
                f"top-1 agreement {s.top1_agreement:.4f}, KL {s.kl:.4f}"
                + (f"; top-1 agreement {s.top1_agreement_clear:.4f} where the model's top-1 leads by ≥ {CLEAR_MARGIN} "
                   f"({s.clear_share:.1%} of positions)" if s.top1_agreement_clear is not None else ""))  # fmt: skip
    return "\n".join(rows)


def plot(r: EvalReport, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    xs = [s.layer for s in r.layers]
    a.bar(xs, [s.nmse for s in r.layers], color="tab:blue")
    a.set(xlabel="layer", ylabel="NMSE", title=f"NMSE (mean {r.mean_nmse:.3f})", xticks=xs)
    b.bar(xs, [s.l0 for s in r.layers], color="tab:orange")
    b.set(xlabel="layer", ylabel="L0", title=f"L0 (total {r.total_l0:.1f})", xticks=xs)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
