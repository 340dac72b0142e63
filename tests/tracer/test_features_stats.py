"""Feature-store statistics against brute force on the same activations: firing counts, quantiles (within half a
fine bin, so within the README's ~4.6 %), the fine 256-bin log histogram over [0.01, 1000] and the linear histogram
shown from it, and the top contexts (one per sequence, 11 tokens before the peak and 4 after)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.tracer import features_subject as subj
from tracer.features import open_store
from tracer.features.build import FINE_BINS, BuildConfig, State, build_store, encode_batch, plan
from tracer.features.corpus import corpus_stream
from tracer.features.finish import QUANTILES
from transcoders.data import sequences

IDENTITY = {"model": {"name": "tiny", "content_hash": "m0"}, "transcoders": {"name": "clt", "content_hash": "t0"},
            "corpus": "corpus.txt"}  # fmt: skip
CFG = BuildConfig(tokens=3_000, seq_len=32, batch_seqs=8, top_k=6, reservoir=8)
HALF_BIN = 10 ** (5 / FINE_BINS / 2)  # a fine bin spans a factor 10^(5/256) = 1.046; its centre is within half


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The variant subject (activations depend on the context), its store, and every activation by brute force:
    acts [n_seqs, seq_len, L·F] from the same batches the build streams."""
    root = tmp_path_factory.mktemp("features_stats")
    tok, m = subj.tokenizer(), subj.model(variant=True)
    tc = subj.transcoder(m, variant=True)
    stream = corpus_stream(tok, subj.corpus(root / "corpus.txt"), 10_000, None)
    res = build_store(m, tc, tok, stream, root / "v.sqlite", IDENTITY, CFG, progress=False)
    seq_len, n = plan(len(stream), CFG, m.cfg.n_ctx, 0)
    toks = sequences(stream, 0, n, seq_len, 0)
    acts = torch.cat([encode_batch(m, tc, toks[i : i + CFG.batch_seqs], True) for i in range(0, n, CFG.batch_seqs)])
    return open_store(res.path), toks, acts, tok


def firing(acts: torch.Tensor, n: int) -> np.ndarray:
    a = acts[..., n].flatten().double().numpy()
    return a[a > 0]


def test_counts_mean_max_and_quantiles_against_brute_force(built):
    db, toks, acts, _ = built
    n_fires = 0
    for n in range(acts.shape[-1]):
        info, a = db.describe(*divmod(n, 8)), firing(acts, n)
        assert info.n_fires == len(a) > 50 and len(np.unique(a)) > 50  # spread out: the quantiles differ
        assert info.frequency == pytest.approx(len(a) / (toks.shape[0] * (toks.shape[1] - 1)))
        assert info.mean == pytest.approx(a.mean(), rel=1e-6) and info.act_max == pytest.approx(a.max(), rel=1e-6)
        exact = np.quantile(a, QUANTILES, method="inverted_cdf")  # the smallest value with ≥ q of them at or below
        got = np.array([v for _, v in info.quantiles])
        assert [q for q, _ in info.quantiles] == list(QUANTILES)
        assert np.all(np.abs(got / exact - 1) <= 0.046)  # the README's promise
        assert np.all(got / exact <= HALF_BIN + 1e-4) and np.all(exact / got <= HALF_BIN + 1e-4)  # the fine bin's
        assert np.all(np.diff(got) >= 0) and got[-1] <= info.act_max  # never above the maximum seen
        n_fires += len(a)
    assert n_fires > 10_000


def test_histogram_edges_and_counts(built):
    """Edges: 32 equal bins over [0, max]. Counts: each fine bin goes whole to the linear bin of its centre, so below
    every inner edge the stored counts add up to numpy's exact count, give or take the activations within half a
    fine bin of that edge."""
    db, _, acts, _ = built
    slack = []
    for n in range(acts.shape[-1]):
        info, a = db.describe(*divmod(n, 8)), firing(acts, n)
        edges, counts = info.histogram
        assert len(edges) == CFG.hist_bins + 1 and len(counts) == CFG.hist_bins and sum(counts) == len(a)
        assert edges == pytest.approx(np.linspace(0, a.max(), CFG.hist_bins + 1).tolist(), abs=2e-5)
        ref, _ = np.histogram(a, bins=np.linspace(0, a.max(), CFG.hist_bins + 1))
        for k, e in enumerate(edges[1:-1], 1):
            near = int(((a / HALF_BIN <= e) & (e <= a * HALF_BIN)).sum())
            assert abs(sum(counts[:k]) - int(ref[:k].sum())) <= near
            slack.append(near / len(a))
    assert np.mean(slack) < 0.05  # the allowance is small (~2 % of the activations per edge)


def test_fine_histogram_is_256_log_bins_over_0_01_to_1000(built):
    """The running fine histogram, fed the build's batches, equals numpy's over log10 in [-2, 3], with activations
    below 0.01 in the first bin and above 1000 in the last."""
    _, toks, acts, _ = built
    st = State(acts.shape[-1], CFG)
    for i in range(0, len(toks), CFG.batch_seqs):
        j = min(i + CFG.batch_seqs, len(toks))
        st.update(acts[i:j], toks[i:j], torch.arange(i, j))
    for n in range(acts.shape[-1]):
        ref, _ = np.histogram(np.log10(firing(acts, n)), bins=FINE_BINS, range=(-2.0, 3.0))
        assert st.t["hist"][n].tolist() == ref.tolist()
    # out of range and the bin edges: log10 = -2 + k·5/256 opens bin k
    edge = lambda k: 10 ** (-2 + k * 5 / FINE_BINS)  # noqa: E731
    vals = [0.001, 0.0099, 0.01, edge(1) * 1.001, edge(128) * 1.001, edge(128) / 1.001, 999.0, 5000.0]
    one = State(1, CFG)
    one.update(torch.tensor(vals).view(1, -1, 1), torch.zeros(1, len(vals), dtype=torch.long), torch.tensor([0]))
    hist = one.t["hist"][0]
    assert {k: int(hist[k]) for k in hist.nonzero().flatten().tolist()} == {0: 3, 1: 1, 127: 1, 128: 1, 255: 2}


def test_top_contexts_one_per_sequence_around_the_peak(built):
    """Each feature's top contexts are the top_k sequences by their peak; each shows the 11 tokens before the peak
    (from position 1: BOS is not shown), the peak and 4 after, with the activation on every token."""
    db, toks, acts, tok = built
    P, twice = toks.shape[1], 0
    for n in range(acts.shape[-1]):
        a = acts[:, :, n]
        peak_val, peak_pos = a.max(1)  # first position on ties
        order = sorted(range(len(a)), key=lambda s: -float(peak_val[s]))[: CFG.top_k]
        want = []
        for s in order:
            p = int(peak_pos[s])
            lo, hi = max(1, p - CFG.before), min(P, p + CFG.after + 1)
            want.append(([tok.token_str(int(t)) for t in toks[s, lo:hi]], a[s, lo:hi].tolist(), p - lo))
        top = [c for c in db.describe(*divmod(n, 8)).contexts if c.band == "top"]
        assert [c.tokens for c in top] == [w[0] for w in want]
        assert [c.peak for c in top] == [w[2] for w in want]
        for c, (_, wa, _) in zip(top, want, strict=True):
            assert c.acts == pytest.approx(wa, rel=1e-3, abs=1e-3)  # stored as float16
        assert [c.peak_act for c in top] == pytest.approx([float(peak_val[s]) for s in order], rel=1e-3)
        by_token = a.flatten().topk(CFG.top_k).indices // P  # the sequences of the top tokens, one per token
        twice += len(set(by_token.tolist())) < CFG.top_k
    assert twice >= 8  # features whose strongest tokens include two of one sequence: the rule is exercised


def test_two_peaks_in_one_sequence_give_one_context():
    """State.update by hand: a feature peaks at 5.0 (position 3) and 7.0 (position 20) of sequence 10, at 6.0
    (position 30 of 32) of sequence 11 and at 4.0 (position 2) of sequence 12; top_k = 4 keeps one context per
    sequence, at its highest peak, with 11 tokens before and 4 after (-1 past either end or on BOS)."""
    st = State(1, BuildConfig(top_k=4, reservoir=2))
    toks = torch.arange(100, 196).view(3, 32)
    acts = torch.zeros(3, 32, 1)
    acts[0, 3, 0], acts[0, 20, 0], acts[0, 22, 0], acts[1, 30, 0], acts[2, 2, 0] = 5.0, 7.0, 1.0, 6.0, 4.0
    st.update(acts, toks, torch.tensor([10, 11, 12]))
    t = st.t
    assert t["top_val"][0].tolist() == [7.0, 6.0, 4.0, -math.inf]
    assert t["top_seq"][0, :3].tolist() == [10, 11, 12] and t["top_pos"][0, :3].tolist() == [20, 30, 2]
    assert t["top_tok"][0, 0].tolist() == list(range(109, 125))  # positions 20-11 .. 20+4
    assert t["top_act"][0, 0].tolist() == [0.0] * 11 + [7.0, 0.0, 1.0, 0.0, 0.0]
    assert t["top_tok"][0, 1].tolist() == list(range(151, 164)) + [-1] * 3  # past the sequence's end
    assert t["top_act"][0, 1, 11].item() == 6.0
    assert t["top_tok"][0, 2].tolist() == [-1] * 10 + list(range(165, 171))  # positions -9..0: before and BOS
    assert t["top_act"][0, 2].tolist() == [0.0] * 11 + [4.0] + [0.0] * 4
