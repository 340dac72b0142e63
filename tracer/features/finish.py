"""The last step of a feature-store build: running statistics -> one row per feature, written in one transaction.

1. summaries: frequency = fires / tokens, mean of the non-zero activations, max = the best top-k peak;
   quantiles (QUANTILES) and a linear histogram [0, max] from the fine log histogram (each fine bin's count goes
   to the linear bin holding its geometric centre: both are approximations within one fine bin, ~4.6 %).
2. examples: the top-k contexts (band "top"), then up to `per_band` sampled contexts from each lower band
   (BANDS: between the 50 % and 90 % quantiles, 25-50 %, below 25 %), skipping tokens already shown.
3. lens and labels (tracer.features.lens, tracer.features.labels).
4. write: vocab, every feature row, `complete = 1`, the checkpoint dropped — one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tracer.features.labels import EMPTY, RULES, label_feature
from tracer.features.lens import feature_lens
from tracer.features.store import BANDS, pack_examples
from tracer.models import Tokenizer, Transformer
from transcoders import Transcoder

if TYPE_CHECKING:
    from tracer.features.build import BuildConfig, State

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
LOGIT_LENS = ("sum of the decoder over its output layers, times the final norm's gain (denominator 1), through "
              "the unembedding")  # fmt: skip


def fine_centers() -> torch.Tensor:
    from tracer.features.build import FINE_BINS, FINE_HI, FINE_LO

    return 10 ** (FINE_LO + (torch.arange(FINE_BINS, dtype=torch.float64) + 0.5) * (FINE_HI - FINE_LO) / FINE_BINS)


def summaries(state: State, n_tokens: int) -> dict[str, torch.Tensor]:
    """Step 1 for all features at once."""
    t, hb = state.t, state.cfg.hist_bins
    fires = t["n_fires"]
    amax = t["top_val"][:, 0].clamp_min(0).double()
    centers = fine_centers()
    cum = t["hist"].long().cumsum(1).double()
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    idx = torch.searchsorted(cum, (q[None, :] * fires[:, None].double()).contiguous()).clamp(max=len(centers) - 1)
    qv = torch.minimum(centers[idx], amax[:, None])
    lin = (centers[None, :] / amax.clamp_min(1e-12)[:, None] * hb).floor().clamp(0, hb - 1).long()
    counts = torch.zeros(len(fires), hb, dtype=torch.int64).scatter_add_(1, lin, t["hist"].long())
    return {"fires": fires, "freq": fires.double() / max(n_tokens, 1), "mean": t["sum"] / fires.clamp_min(1),
            "max": amax, "qv": qv, "counts": counts}  # fmt: skip


def examples(t: dict[str, np.ndarray], cfg: BuildConfig, n: int,
             qv: np.ndarray) -> tuple[bytes | None, list[int], list[int]]:  # fmt: skip
    """Step 2 for feature n (state arrays as numpy): (blob, peak token ids of the top contexts, the ids of the
    tokens that follow those peaks (-1: past the sequence end))."""
    keep = np.flatnonzero(t["top_val"][n] > 0)
    shown = set(zip(t["top_seq"][n, keep].tolist(), t["top_pos"][n, keep].tolist(), strict=True))
    q25, q50, q90 = qv[1], qv[2], qv[4]
    taken = {1: 0, 2: 0, 3: 0}
    picked, bands = [], []
    for j in np.flatnonzero(t["res_seq"][n] >= 0).tolist():
        v = float(t["res_val"][n, j])
        b = 3 if v < q25 else 2 if v < q50 else 1 if v < q90 else 0
        key = (int(t["res_seq"][n, j]), int(t["res_pos"][n, j]))
        if b == 0 or taken[b] >= cfg.per_band or key in shown:
            continue
        taken[b] += 1
        shown.add(key)
        picked.append(j)
        bands.append(b)
    order = np.argsort(np.array(bands, dtype=np.int64), kind="stable")  # bands in BANDS order
    picked_a = np.array(picked, dtype=np.int64)[order]
    toks = np.concatenate([t["top_tok"][n, keep], t["res_tok"][n, picked_a]])
    acts = np.concatenate([t["top_act"][n, keep], t["res_act"][n, picked_a]])
    band = np.concatenate([np.zeros(len(keep), np.uint8), np.array(bands, np.uint8)[order]])
    peak = np.full(len(toks), cfg.before, dtype=np.int16)
    after = t["top_tok"][n, keep, cfg.before + 1].tolist() if cfg.after else []
    return pack_examples(toks, acts, peak, band), t["top_tok"][n, keep, cfg.before].tolist(), after


def _json(x: Any) -> str:
    return json.dumps(x, separators=(",", ":"))


def _pairs(ids: list[int], vals: list[float]) -> str:
    return _json([[i, round(v, 3)] for i, v in zip(ids, vals, strict=True)])


def finish_rows(con: sqlite3.Connection, model: Transformer, tc: Transcoder, tokenizer: Tokenizer, state: State,
                n_tokens: int, prov: dict[str, Any]) -> None:  # fmt: skip
    """Steps 1-4."""
    s = summaries(state, n_tokens)
    lens = feature_lens(model, tc, state.cfg.n_tokens_lens)
    V = model.cfg.vocab_size
    vocab = [tokenizer.token_str(i) if i < tokenizer.vocab_size else f"<{i}>" for i in range(V)]
    F = tc.cfg.n_features
    qv_all, edges_max = s["qv"].tolist(), s["max"].tolist()
    arrays = {k: v.numpy() for k, v in state.t.items()}
    L = {k: v.tolist() for k, v in (("fires", s["fires"]), ("freq", s["freq"]), ("mean", s["mean"]),
                                    ("counts", s["counts"]), ("lz", lens.logit_z), ("lg", lens.logit_gap),
                                    ("iz", lens.input_z))}  # fmt: skip
    lists = [(x.ids.tolist(), x.values.tolist()) for x in (lens.top_logits, lens.bottom_logits, lens.top_inputs)]
    rows = []
    for n in range(state.n):
        layer, feat = divmod(n, F)
        fires = L["fires"][n]
        blob, peaks, nexts = examples(arrays, state.cfg, n, np.asarray(qv_all[n])) if fires else (None, [], [])
        peak_str = [vocab[i] if 0 <= i < V else "" for i in peaks]
        (tl, _), _, (ti, _) = lists
        lab = label_feature(peak_str, vocab[tl[n][0]], L["lz"][n], L["lg"][n], vocab[ti[n][0]], L["iz"][n],
                            [vocab[i] if 0 <= i < V else "" for i in nexts],
                            [vocab[i] for i in tl[n]]) if fires else EMPTY  # fmt: skip
        rows.append((
            layer, feat, fires, L["freq"][n], L["mean"][n], edges_max[n],
            _json([[q, round(v, 4)] for q, v in zip(QUANTILES, qv_all[n], strict=True)]),
            _json(L["counts"][n] if fires else []), *(_pairs(ids[n], vals[n]) for ids, vals in lists),
            lab.text, lab.rule, lab.confidence, "\x1f".join(dict.fromkeys(peak_str)), blob,
        ))  # fmt: skip
    prov = prov | {"logit_lens": LOGIT_LENS, "label_rules": RULES, "bands": list(BANDS), "quantiles": QUANTILES}
    con.execute("BEGIN")
    con.execute("DELETE FROM vocab")
    con.executemany("INSERT INTO vocab VALUES (?, ?)", list(enumerate(vocab)))
    con.execute("DELETE FROM features")
    con.executemany(f"INSERT INTO features VALUES ({', '.join('?' * 16)})", rows)
    con.execute("DELETE FROM checkpoint")
    con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [("provenance", json.dumps(prov)), ("complete", "1")])  # fmt: skip
    con.execute("COMMIT")
