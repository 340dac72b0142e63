"""The store's weight-only views on the variant subject: the logit lens (decoder summed over every output layer,
times the final norm's gain, through the unembedding), the input side (embeddings through the layer's MLP norm into
the encoder), and the `inputs` label rule on both sides of its threshold."""

from __future__ import annotations

import numpy as np
import pytest

from tests.tracer import features_subject as subj
from tracer.features import open_store
from tracer.features.build import BuildConfig, build_store
from tracer.features.corpus import corpus_stream
from tracer.features.labels import INPUT_Z, label_feature

IDENTITY = {"model": {"name": "tiny", "content_hash": "m0"}, "transcoders": {"name": "clt", "content_hash": "t0"},
            "corpus": "corpus.txt"}  # fmt: skip
CFG = BuildConfig(tokens=3_000, seq_len=32, batch_seqs=8, top_k=6, reservoir=8)
F = 8


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("features_lens")
    tok, m = subj.tokenizer(), subj.model(variant=True)
    tc = subj.transcoder(m, variant=True)
    stream = corpus_stream(tok, subj.corpus(root / "corpus.txt"), 10_000, None)
    res = build_store(m, tc, tok, stream, root / "v.sqlite", IDENTITY, CFG, progress=False)
    return open_store(res.path), m, tc


def numpy_lens(m, tc) -> np.ndarray:
    """[L·F, V] logit effect per unit activation, one output layer at a time (tied embeddings: W_U = E)."""
    E = m.embed.weight.double().numpy()
    gain = m.ln_f.weight.double().numpy()
    out = []
    for layer in range(2):
        dec = tc.W_dec[layer].double().numpy()  # [F, n_out, D]
        out.append(sum(dec[:, o] * gain for o in range(dec.shape[1])) @ E.T)
    return np.concatenate(out)


def numpy_inputs(m, tc) -> np.ndarray:
    """[L·F, V] encoder pre-activation on each embedding alone, through the layer's RMSNorm (its own gain)."""
    E = m.embed.weight.double().numpy()
    x = E / np.sqrt((E**2).mean(1, keepdims=True) + m.cfg.norm_eps)
    out = []
    for layer in range(2):
        xl = x * m.blocks[layer].ln2.weight.double().numpy()
        out.append((xl @ tc.W_enc[layer].double().numpy().T + tc.b_enc[layer].double().numpy()).T)
    return np.concatenate(out)


def assert_ranked(got: list[tuple[str, float]], ref: np.ndarray, largest: bool = True) -> None:
    """got = the store's (token, value) list: the reference's 10 largest (smallest) values in order, each token
    carrying its own reference value (so tokens tied at one value may come in any order)."""
    order = np.sort(ref)[::-1] if largest else np.sort(ref)
    assert [v for _, v in got] == pytest.approx(order[:10], abs=1e-3)
    assert [v for _, v in got] == pytest.approx([ref[subj.VOCAB.index(t)] for t, _ in got], abs=1e-3)
    assert len({t for t, _ in got}) == len(got)


def test_planted_lens_by_hand(built):
    """PLANTED writes e1 to layer 0 and 0.5·e0 to layer 1; the final gain is 3 on e0 and 0.5 on e1; E[France] = 4·e0,
    E[Paris] = 4·e1: France 0.5·3·4 = 6, Paris 1·0.5·4 = 2 (without the gain Paris would lead; with the layer-0
    decoder alone France would be 0), every other token 0."""
    db, _, _ = built
    info = db.describe(*subj.PLANTED)
    assert info.top_logits[:2] == [("France", 6.0), ("Paris", 2.0)]
    assert [v for _, v in info.top_logits[2:]] == [0.0] * 8
    assert [v for _, v in info.bottom_logits] == [0.0] * 10
    assert {"France", "Paris"}.isdisjoint(t for t, _ in info.bottom_logits)
    assert info.label == "France → France" and info.label_rule == "peak+inputs+logits"


def test_lens_of_every_feature_against_numpy(built):
    db, m, tc = built
    ref = numpy_lens(m, tc)
    for n in range(2 * F):
        info = db.describe(*divmod(n, F))
        assert_ranked(info.top_logits, ref[n])
        assert_ranked(info.bottom_logits, ref[n], largest=False)


def test_input_side_against_numpy(built):
    """The input side is read from the store: the tokens whose embeddings excite the encoder most, in order."""
    db, m, tc = built
    ref = numpy_inputs(m, tc)
    planted = db.describe(*subj.PLANTED).top_inputs
    w = float(m.blocks[0].ln2.weight[0])
    assert planted[0] == ("France", pytest.approx(4 / np.sqrt(1 + m.cfg.norm_eps) * w, abs=1e-3))
    assert [v for _, v in planted[1:]] == [0.0] * 9  # no other token has an e0 component; its bias is 0
    for n in range(2 * F):
        assert_ranked(db.describe(*divmod(n, F)).top_inputs, ref[n])


def test_inputs_rule_in_the_store(built):
    """`inputs` joins the rule exactly when a `peak` label's token is the top input token with robust z ≥ 6; the
    store has both sides: the planted feature (z infinite) and features whose top input agrees with a weak z."""
    db, m, tc = built
    ref = numpy_inputs(m, tc)
    seen = {True: 0, False: 0}
    for n in range(2 * F):
        info = db.describe(*divmod(n, F))
        if "peak" not in info.label_rule:
            continue
        med = np.median(ref[n])
        mad = 1.4826 * np.median(np.abs(ref[n] - med))
        z = (ref[n].max() - med) / mad if mad else np.inf
        agree = subj.VOCAB[int(ref[n].argmax())] == info.label.split(" → ")[0]
        assert ("inputs" in info.label_rule) == (agree and z >= INPUT_Z)
        if agree:
            seen[bool(z >= INPUT_Z)] += 1
    assert seen[True] >= 1 and seen[False] >= 1


def test_inputs_rule_threshold_by_hand():
    """Peak token ' is' in 3 of 5 top contexts (share 0.6): a top input ' IS ' with z ≥ INPUT_Z adds 0.25 to the
    confidence; just below the threshold, or another token, it does not; the confidence is capped at 1."""
    peaks = [" is"] * 3 + [" a", " b"]
    at = label_feature(peaks, " x", 0.0, 0.0, " IS ", INPUT_Z)
    assert (at.text, at.rule, at.confidence) == ("is", "peak+inputs", 0.85)
    below = label_feature(peaks, " x", 0.0, 0.0, " is", np.nextafter(INPUT_Z, 0))
    assert (below.text, below.rule, below.confidence) == ("is", "peak", 0.6)
    other = label_feature(peaks, " x", 0.0, 0.0, " a", 1e9)
    assert (other.rule, other.confidence) == ("peak", 0.6)
    full = label_feature([" is"] * 4 + [" a"], " x", 0.0, 0.0, " is", INPUT_Z + 1)
    assert (full.rule, full.confidence) == ("peak+inputs", 1.0)
    # with the lens passing too, the raised confidence still counts when it is the larger
    both = label_feature(peaks, " Paris", 9.0, 1.2, " is", INPUT_Z)
    assert (both.text, both.rule, both.confidence) == ("is → Paris", "peak+inputs+logits", 0.85)
    assert label_feature(peaks, " Paris", 9.0, 1.2, " is", 0.0).confidence == 0.6
    # no peak label: a strong input token alone labels nothing
    assert label_feature([" a", " b", " c"], " x", 0.0, 0.0, " a", 1e9).text == ""
