"""Build a feature store by streaming the model over a corpus; memory stays bounded (no per-token dump).

1. open: create the store (or find the checkpoint of an interrupted build with the same provenance and resume).
2. stream: sequence j = BOS + the next seq_len-1 corpus tokens from position j·(seq_len-1) (transcoders.data);
   batches of `batch_seqs` sequences, in order.
3. forward: the model with the transcoders' input hook captured at every layer, then the encoder -> activations
   [B, P, L·F] (position 0, BOS, zeroed as in a trace).
4. bookkeep, per feature: firing count and activation sum; a fine log-spaced histogram of non-zero activations
   (FINE_BINS bins over [1e-2, 1e3], from which quantiles and the shown linear histogram come); the top-k
   sequences by their peak activation (one context per sequence) with the window around the peak; and a uniform
   sample of firing tokens (the `reservoir` with the smallest seeded hash keys) for the lower-quantile examples.
5. checkpoint: every `checkpoint_seconds`, the whole state in one committed transaction (the store stays
   `complete = 0`); an interrupt loses at most the work since the last checkpoint.
6. finish: summaries, the lens (tracer.features.lens), labels (tracer.features.labels) and every feature row in one
   transaction that also sets `complete = 1` and drops the checkpoint; then VACUUM.
The result depends only on the inputs and the settings (seeded), not on where a build was interrupted.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from tracer.errors import ConfigError
from tracer.features.finish import finish_rows
from tracer.features.store import FORMAT, SCHEMA, FeatureStoreError, _connect, read_meta
from tracer.models import Site, Tokenizer, Transformer
from transcoders import Transcoder
from transcoders.data import sequences

log = logging.getLogger(__name__)
FINE_BINS, FINE_LO, FINE_HI = 256, -2.0, 3.0  # log10 range of the fine histogram
_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class BuildConfig:
    tokens: int = 1_000_000  # corpus tokens to stream (capped at the corpus length)
    seq_len: int = 128  # tokens per sequence incl. BOS (capped at the model's context)
    batch_seqs: int = 16  # sequences per forward pass
    top_k: int = 10  # top-activating contexts kept per feature
    reservoir: int = 24  # uniformly sampled firing tokens kept per feature (lower-quantile examples)
    per_band: int = 3  # lower-quantile examples shown per band
    before: int = 11  # window tokens before the peak
    after: int = 4  # window tokens after the peak
    hist_bins: int = 32  # bins of the stored (linear) histogram
    n_tokens_lens: int = 10  # top/bottom logit and input tokens kept
    seed: int = 0
    checkpoint_seconds: float = 60.0  # not part of the provenance: it does not change the result

    def __post_init__(self) -> None:
        for name in ("tokens", "seq_len", "batch_seqs", "top_k", "reservoir", "hist_bins", "n_tokens_lens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"feature build setting {name} must be ≥ 1, not {getattr(self, name)}")
        if self.seq_len < 2:
            raise ConfigError("seq_len must be ≥ 2")

    @property
    def window(self) -> int:
        return self.before + 1 + self.after

    def provenance(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "checkpoint_seconds"}


class BuildResult(NamedTuple):
    path: Path
    n_tokens: int
    seconds: float
    tokens_per_s: float
    resumed_from: int  # batches already done when this run started
    timings: dict[str, float]


@contextmanager
def phase(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Add the block's wall time to timings[name] (phases named as in the module docstring)."""
    t0 = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


class Interrupted(Exception):
    """Raised by `build_store(stop_after=...)` after committing a checkpoint (tests of resumability)."""


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (lowbias32) of int64 values, in int64 arithmetic."""
    x = x & _M32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _M32
    x = ((x ^ (x >> 15)) * 0x846CA68B) & _M32
    return x ^ (x >> 16)


class State:
    """Step 4's running statistics for N = L·F features, as a dict of tensors (saved whole in a checkpoint)."""

    def __init__(self, n: int, cfg: BuildConfig) -> None:
        k, r, w = cfg.top_k, cfg.reservoir, cfg.window
        self.cfg, self.n = cfg, n
        self.t: dict[str, torch.Tensor] = {
            "batches": torch.zeros((), dtype=torch.int64), "n_fires": torch.zeros(n, dtype=torch.int64),
            "sum": torch.zeros(n, dtype=torch.float64), "hist": torch.zeros(n, FINE_BINS, dtype=torch.int32),
            "top_val": torch.full((n, k), -math.inf), "top_seq": torch.full((n, k), -1, dtype=torch.int64),
            "top_pos": torch.zeros(n, k, dtype=torch.int64), "top_tok": torch.full((n, k, w), -1, dtype=torch.int32),
            "top_act": torch.zeros(n, k, w, dtype=torch.float16),
            "res_key": torch.full((n, r), _M32 + 1, dtype=torch.int64),
            "res_val": torch.zeros(n, r), "res_seq": torch.full((n, r), -1, dtype=torch.int64),
            "res_pos": torch.zeros(n, r, dtype=torch.int64), "res_tok": torch.full((n, r, w), -1, dtype=torch.int32),
            "res_act": torch.zeros(n, r, w, dtype=torch.float16),
        }  # fmt: skip

    def windows(self, acts: torch.Tensor, tokens: torch.Tensor, b: torch.Tensor, pos: torch.Tensor,
                f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Token ids [m, W] (-1 outside the sequence or on BOS) and activations [m, W] around (b, pos) of f."""
        P = tokens.shape[1]
        win = pos[:, None] + torch.arange(-self.cfg.before, self.cfg.after + 1)
        valid = (win >= 1) & (win < P)
        wc = win.clamp(0, P - 1)
        tok = tokens[b[:, None], wc].to(torch.int32).masked_fill(~valid, -1)
        act = acts[b[:, None], wc, f[:, None]].masked_fill(~valid, 0.0)
        return tok, act

    def update(self, acts: torch.Tensor, tokens: torch.Tensor, seq_ids: torch.Tensor) -> None:
        """Fold one batch in: acts [B, P, N] (zero where not firing), tokens [B, P], seq_ids [B] global indices."""
        t = self.t
        b, p, f = (acts > 0).nonzero(as_tuple=True)
        vals = acts[b, p, f]
        t["n_fires"] += torch.bincount(f, minlength=self.n)
        t["sum"].index_add_(0, f, vals.double())
        fine = ((vals.log10() - FINE_LO) / (FINE_HI - FINE_LO) * FINE_BINS).floor().clamp(0, FINE_BINS - 1).long()
        t["hist"] += torch.bincount(f * FINE_BINS + fine, minlength=self.n * FINE_BINS).view(self.n, FINE_BINS).int()
        self._top(acts, tokens, seq_ids, b, p, f, vals)
        self._sample(acts, tokens, seq_ids, b, p, f, vals)
        t["batches"] += 1

    def _top(self, acts, tokens, seq_ids, b, p, f, vals) -> None:
        """Per feature, the top_k sequences by peak activation (first peak position on ties)."""
        t, k, n, B, P = self.t, self.cfg.top_k, self.n, len(seq_ids), tokens.shape[1]
        sf = b * n + f  # (sequence, feature) cell of each firing entry
        peak = torch.zeros(B * n).scatter_reduce_(0, sf, vals, "amax")
        at = vals == peak[sf]
        arg = torch.full((B * n,), P, dtype=torch.int64).scatter_reduce_(0, sf[at], p[at], "amin")
        peak, arg = peak.view(B, n).T, arg.view(B, n).T  # [N, B]
        better = peak > t["top_val"][:, -1:]
        uf = better.any(1).nonzero().flatten()  # only the features whose top-k changes
        if len(uf) == 0:
            return
        pk, ag, bt = peak[uf], arg[uf], better[uf]
        lf, lb = bt.nonzero(as_tuple=True)
        W = self.cfg.window
        c_tok = torch.full((len(uf), B, W), -1, dtype=torch.int32)
        c_act = torch.zeros(len(uf), B, W, dtype=torch.float16)  # window activations are stored in float16
        tok, act = self.windows(acts, tokens, lb, ag[lf, lb], uf[lf])
        c_tok[lf, lb], c_act[lf, lb] = tok, act.half()
        val = torch.cat([t["top_val"][uf], torch.where(bt, pk, -math.inf)], 1)
        sel = val.topk(k, dim=1).indices  # [u, k] into the k old + B new
        rows = torch.arange(len(uf))[:, None]
        old, new, is_new = sel.clamp(max=k - 1), (sel - k).clamp(min=0), sel >= k
        pick = lambda o, nw: torch.where(is_new.view(*is_new.shape, *[1] * (o.dim() - 2)), nw, o)  # noqa: E731
        t["top_val"][uf] = val.gather(1, sel)
        t["top_seq"][uf] = pick(t["top_seq"][uf][rows, old], seq_ids[new])
        t["top_pos"][uf] = pick(t["top_pos"][uf][rows, old], ag[rows, new])
        t["top_tok"][uf] = pick(t["top_tok"][uf][rows, old], c_tok[rows, new])
        t["top_act"][uf] = pick(t["top_act"][uf][rows, old], c_act[rows, new])

    def _sample(self, acts, tokens, seq_ids, b, p, f, vals) -> None:
        """Keep, per feature, the `reservoir` firing tokens with the smallest hash keys (a uniform sample)."""
        t, r, P = self.t, self.cfg.reservoir, tokens.shape[1]
        key = hash32(hash32((seq_ids[b] * P + p) * 1_000_003 + self.cfg.seed) ^ f)
        keep = key < t["res_key"][f, -1]
        b, p, f, vals, key = b[keep], p[keep], f[keep], vals[keep], key[keep]
        if len(f) == 0:
            return
        uf = f.unique()  # sorted
        u = len(uf)
        loc = torch.searchsorted(uf, f)
        tok, act = self.windows(acts, tokens, b, p, f)
        all_loc = torch.cat([torch.arange(u).repeat_interleave(r), loc])
        all_key = torch.cat([t["res_key"][uf].flatten(), key])
        order = torch.sort(all_loc * (_M32 + 2) + all_key, stable=True).indices
        sl = all_loc[order]
        rank = torch.arange(len(sl)) - torch.searchsorted(sl, sl, side="left")
        ok = rank < r
        src, dst_l, dst_r = order[ok], sl[ok], rank[ok]
        n_old = u * r
        from_old = src < n_old
        new_i = (src - n_old).clamp(min=0)
        old_l, old_r = src.clamp(max=n_old - 1) // r, src.clamp(max=n_old - 1) % r
        for name, nv in (("res_key", key), ("res_val", vals), ("res_seq", seq_ids[b]), ("res_pos", p),
                         ("res_tok", tok), ("res_act", act)):  # fmt: skip
            cur = t[name][uf]  # [u, r, ...] copy
            o = cur[old_l, old_r]
            m = from_old.view(-1, *[1] * (o.dim() - 1))
            cur[dst_l, dst_r] = torch.where(m, o, nv[new_i].to(cur.dtype))
            t[name][uf] = cur

    def to_bytes(self) -> bytes:
        return st_save({k: v.contiguous() for k, v in self.t.items()})

    def load_bytes(self, data: bytes) -> None:
        loaded = st_load(data)
        if set(loaded) != set(self.t) or any(loaded[k].shape != v.shape for k, v in self.t.items()):
            raise FeatureStoreError("the store's checkpoint does not fit these settings; rebuild with --overwrite")
        self.t = loaded


# 1. open


def open_for_build(path: Path, provenance: dict[str, Any], overwrite: bool) -> tuple[sqlite3.Connection, bytes | None,
                                                                                     bool]:  # fmt: skip
    """(connection, checkpoint state or None, already complete)."""
    if overwrite:
        path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    try:
        con = _connect(path)
        meta = read_meta(con, path) if existed else {}
    except sqlite3.DatabaseError as e:
        raise FeatureStoreError(f"{path} is not a feature store ({e}); use --overwrite to replace it") from None
    if existed and meta:
        if meta.get("format") != FORMAT or json.loads(meta.get("provenance", "{}")).get("build") != provenance["build"]:
            raise FeatureStoreError(f"{path} holds a store of other transcoders, corpus or settings; "
                                    "use --overwrite to replace it")  # fmt: skip
        if meta.get("complete") == "1":
            return con, None, True
        row = con.execute("SELECT state FROM checkpoint WHERE id = 0").fetchone()
        return con, (bytes(row[0]) if row else None), False
    con.executescript(SCHEMA)
    with con:
        con.execute("BEGIN")
        con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        [("format", FORMAT), ("complete", "0"), ("provenance", json.dumps(provenance))])  # fmt: skip
    return con, None, False


def save_checkpoint(con: sqlite3.Connection, state: State) -> None:
    con.execute("BEGIN")
    con.execute("INSERT OR REPLACE INTO checkpoint VALUES (0, ?)", (state.to_bytes(),))
    con.execute("COMMIT")


# 3. forward


@torch.no_grad()
def encode_batch(model: Transformer, tc: Transcoder, tokens: torch.Tensor, bos: bool) -> torch.Tensor:
    """tokens [B, P] -> activations [B, P, L·F] float32 (BOS position zeroed)."""
    L = tc.cfg.n_layers
    sites = [Site(tc.cfg.input_hook, layer) for layer in range(L)]
    with model.hooks.capture(sites) as cache:
        model(tokens)
    B, P = tokens.shape
    dt = tc.W_enc.dtype
    acts = torch.cat([tc.encode_layer(cache[s].reshape(B * P, -1).to(dt), s.layer) for s in sites], 1)
    acts = acts.float().view(B, P, -1)
    if bos:
        acts[:, 0] = 0
    return acts


def plan(stream_len: int, cfg: BuildConfig, n_ctx: int, bos: int | None) -> tuple[int, int]:
    """(seq_len, number of sequences) for this corpus and model; the corpus is never wrapped around."""
    seq_len = min(cfg.seq_len, n_ctx)
    body = seq_len - 1 if bos is not None else seq_len
    n_seqs = min(math.ceil(cfg.tokens / body), stream_len // body)
    if n_seqs < 1:
        raise ConfigError(f"the corpus holds {stream_len} tokens, fewer than one sequence of {body}")
    return seq_len, n_seqs


def build_store(model: Transformer, tc: Transcoder, tokenizer: Tokenizer, stream: torch.Tensor, path: Path,
                identity: dict[str, Any], cfg: BuildConfig, *, overwrite: bool = False, progress: bool = True,
                stop_after: int | None = None) -> BuildResult:  # fmt: skip
    """Steps 1-6 of the module docstring. identity: {"model": {name, content_hash}, "transcoders": {...},
    "corpus": name}. stop_after: commit a checkpoint after that many batches of this run and raise Interrupted."""
    t: dict[str, float] = {}
    bos = model.cfg.bos_token_id if model.cfg.bos_token_id is not None else tokenizer.bos_id
    seq_len, n_seqs = plan(len(stream), cfg, model.cfg.n_ctx, bos)
    n_tokens = n_seqs * (seq_len - 1 if bos is not None else seq_len)
    L, F = tc.cfg.n_layers, tc.cfg.n_features
    prov = identity | {"n_layers": L, "n_features": F, "n_tokens": n_tokens, "seq_len": seq_len}
    prov["build"] = {"model": identity["model"], "transcoders": identity["transcoders"],
                     "corpus": identity["corpus"], "n_tokens": n_tokens, "settings": cfg.provenance()}  # fmt: skip
    with phase("open", t):
        con, ckpt, done = open_for_build(path, prov, overwrite)
    if done:
        con.close()
        return BuildResult(path, n_tokens, 0.0, 0.0, -1, t)
    state = State(L * F, cfg)
    if ckpt is not None:
        state.load_bytes(ckpt)
    start = int(state.t["batches"])
    n_batches = math.ceil(n_seqs / cfg.batch_seqs)
    body = n_tokens // n_seqs
    bar = tqdm(total=n_tokens, initial=min(n_tokens, start * cfg.batch_seqs * body), desc="features", unit="tok",
               unit_scale=True, disable=not progress)  # fmt: skip
    t0 = last = time.perf_counter()
    for i in range(start, n_batches):
        first, count = i * cfg.batch_seqs, min(cfg.batch_seqs, n_seqs - i * cfg.batch_seqs)
        toks = sequences(stream, first, count, seq_len, bos)  # 2.
        with phase("forward", t):
            acts = encode_batch(model, tc, toks.to(model.embed.weight.device), bos is not None).cpu()
        with phase("bookkeep", t):
            state.update(acts, toks, torch.arange(first, first + count))
        bar.update(count * body)
        done_here = i + 1 - start
        if (stop_after is not None and done_here >= stop_after) or (
                time.perf_counter() - last >= cfg.checkpoint_seconds and i + 1 < n_batches):  # fmt: skip
            with phase("checkpoint", t):
                save_checkpoint(con, state)
            last = time.perf_counter()
            if stop_after is not None and done_here >= stop_after:
                bar.close()
                con.close()
                raise Interrupted(f"stopped after {done_here} batches")
    bar.close()
    stream_s = time.perf_counter() - t0
    with phase("finish", t):
        finish_rows(con, model, tc, tokenizer, state, n_tokens, prov)
    con.execute("VACUUM")
    con.close()
    done_tokens = (n_batches - start) * cfg.batch_seqs * body
    return BuildResult(path, n_tokens, stream_s, min(done_tokens, n_tokens) / max(stream_s, 1e-9), start, t)
