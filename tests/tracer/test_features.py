"""Feature store: a planted feature is found, described, labelled and searchable; builds resume exactly."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from tests.tracer import features_subject as subj
from tracer.features import FeatureStoreError, open_store
from tracer.features.build import BuildConfig, Interrupted, build_store
from tracer.features.corpus import corpus_stream
from tracer.features.labels import EMPTY, label_feature
from transcoders.data import sequences

IDENTITY = {"model": {"name": "tiny", "content_hash": "m0"}, "transcoders": {"name": "clt", "content_hash": "t0"},
            "corpus": "corpus.txt"}  # fmt: skip
CFG = BuildConfig(tokens=2_000, seq_len=32, batch_seqs=8, top_k=6, reservoir=8, checkpoint_seconds=0.0)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    tok, m = subj.tokenizer(), subj.model()
    stream = corpus_stream(tok, subj.corpus(root / "corpus.txt"), 10_000, None)
    return root, tok, m, subj.transcoder(m), stream


def build(parts, name: str, **kw):
    root, tok, m, tc, stream = parts
    return build_store(m, tc, tok, stream, root / name, IDENTITY, kw.pop("cfg", CFG), progress=False, **kw)


@pytest.fixture(scope="module")
def store(parts):
    res = build(parts, "full.sqlite")
    return open_store(res.path, "t0"), res


def test_planted_feature_contexts_logits_label_search(parts, store):
    db, res = store
    info = db.describe(*subj.PLANTED)
    top = [c for c in info.contexts if c.band == "top"]
    assert len(top) == CFG.top_k
    assert all(c.tokens[c.peak] == "France" for c in top)  # every top context peaks on the planted token
    assert all(a == 0 or t == "France" for c in info.contexts for t, a in zip(c.tokens, c.acts, strict=True))
    assert info.top_logits[0][0] == "Paris"
    assert "France" in info.label and "Paris" in info.label and len(info.label) <= 40
    assert db.search("France")[0][:2] == subj.PLANTED
    assert db.search("paris")[0][:2] == subj.PLANTED
    # frequency against a count of " France" in the streamed sequences; activation against the hand-normalised
    # embedding (attention is zeroed: layer 0's MLP input is RMSNorm(E[France]), weight 1; the encoder reads dim 0)
    _, tok, m, _, stream = parts
    n_seqs = res.n_tokens // 31
    seqs = sequences(stream, 0, n_seqs, 32, 0)[:, 1:]
    assert info.n_fires == int((seqs == subj.FRANCE).sum())
    assert info.frequency == pytest.approx(info.n_fires / seqs.numel())
    e = m.embed.weight[subj.FRANCE].double()
    assert info.act_max == pytest.approx(float(e[0] / e.pow(2).mean().add(1e-5).sqrt()), rel=1e-5)
    assert info.mean == pytest.approx(info.act_max, rel=1e-5)  # one token, one activation value
    assert sum(info.histogram[1]) == info.n_fires


def test_interrupted_build_resumes_to_the_same_store(parts, store):
    with pytest.raises(Interrupted):
        build(parts, "resumed.sqlite", stop_after=2)
    with pytest.raises(FeatureStoreError, match="incomplete"):
        open_store(parts[0] / "resumed.sqlite")
    res = build(parts, "resumed.sqlite")
    assert res.resumed_from == 2
    rows = lambda p: sqlite3.connect(p).execute("SELECT * FROM features ORDER BY layer, feature").fetchall()  # noqa: E731
    assert rows(parts[0] / "resumed.sqlite") == rows(parts[0] / "full.sqlite")
    assert build(parts, "resumed.sqlite").resumed_from == -1  # complete: nothing to do


def test_store_refuses_other_transcoders_and_corruption(parts, store, tmp_path):
    db, _ = store
    with pytest.raises(FeatureStoreError, match="other transcoders"):
        open_store(db.path, "another-hash")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(FeatureStoreError, match="not a feature store"):
        open_store(bad)
    with pytest.raises(FeatureStoreError, match="unknown feature"):
        db.describe(0, 8)
    with pytest.raises(FeatureStoreError, match="other transcoders, corpus or settings"):
        build(parts, "full.sqlite", cfg=BuildConfig(tokens=1_000, seq_len=32))


def test_build_is_seeded(parts, store):
    """The lower-quantile sample depends on the seed only: another seed changes it, the top contexts stay."""
    a = store[0].describe(1, 0)
    res = build(parts, "seed1.sqlite", cfg=BuildConfig(**{**CFG.__dict__, "seed": 1}))
    b = open_store(res.path).describe(1, 0)
    assert [c for c in a.contexts if c.band == "top"] == [c for c in b.contexts if c.band == "top"]
    assert a.n_fires == b.n_fires and torch.isclose(torch.tensor(a.mean), torch.tensor(b.mean))


def test_label_rules_by_hand():
    peaks, nexts = [" is"] * 3 + [" capital"] * 2, [" Paris"] * 4 + [" the"]
    lab = label_feature(peaks, " Rome", 3.0, 0.2, " must", 2.0, nexts, [" Rome", " Paris"])
    assert (lab.text, lab.rule, lab.confidence) == ("is → Paris", "peak+next", 0.8)
    assert label_feature(peaks, " Rome", 3.0, 0.2, " must", 2.0, nexts, [" Rome"]).text == "is"  # not a lens token
    assert label_feature(peaks[:2], " Rome", 3.0, 0.2, " x", 2.0).text == ""  # too few contexts
    assert label_feature([" a", " b", " c"], " Rome", 9.0, 1.5, " x", 2.0).text == "→ Rome"  # the lens alone
    assert label_feature([" a", " b", " c"], " Rome", 9.0, 0.5, " x", 2.0) == EMPTY  # not alone at the top
    long = label_feature([" " + "x" * 60] * 3, " " + "y" * 60, 9.0, 2.0, " z", 2.0).text
    assert len(long) <= 40 and long.startswith("x") and "→ y" in long
