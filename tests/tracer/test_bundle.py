"""The bundled default model and the code that builds it (corpus parsing, planted tasks, training)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tracer.bundle import planted
from tracer.bundle.corpus import DOC_SEP, osis_to_text, read_ztext
from tracer.bundle.evaluate import TARGETS, planted_scores
from tracer.bundle.train import Sampler, TrainConfig, lr_at, phase_at, train
from tracer.errors import ConfigError
from tracer.models import DEFAULT_MODEL, load_model

ASSETS = DEFAULT_MODEL.parent
DEMO = [
    ("The capital of France is", " Paris"),
    ("The Eiffel Tower is in the country whose capital is", " Paris"),
    ("When Mary and John went to the store, John gave a drink to", " Mary"),
    ("The opposite of small is", " large"),
]


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    return load_model()  # default = the bundled model, from package files only


# ---- the shipped model -------------------------------------------------------------------------------------
def test_shipped_model_files():
    cfg = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (DEFAULT_MODEL / "model.safetensors").stat().st_size <= 25 * 2**20
    assert (DEFAULT_MODEL / "tokenizer.json").exists() and (ASSETS / "planted_heldout.json").exists()


def test_shipped_model_matches_transformers(lm):
    """Independent reference: the same directory loaded by transformers' LlamaForCausalLM."""
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).eval()
    ids = torch.tensor([lm.tokenizer.encode_prompt(DEMO[2][0], lm.cfg.n_ctx)])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids), ref(ids).logits, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize(("prompt", "answer"), DEMO)
def test_demo_prompts_top1(lm, prompt, answer):
    ids = torch.tensor([lm.tokenizer.encode_prompt(prompt, lm.cfg.n_ctx)])
    with torch.no_grad():
        top = int(lm.model(ids)[0, -1].argmax())
    assert lm.tokenizer.token_str(top) == answer


def test_heldout_accuracy_per_task(lm):
    """Every held-out prompt of every task (unseen frames, fillers and entities), scored afresh, gives exactly the
    shipped eval.json (the README's table); a floor per task catches a model that lost a task outright."""
    items = json.loads((ASSETS / "planted_heldout.json").read_text())
    scores = {s.task: s for s in planted_scores(lm, items)}
    recorded = {t["task"]: t for t in json.loads((DEFAULT_MODEL / "eval.json").read_text())["tasks"]}
    assert scores.keys() == recorded.keys()
    for task, s in scores.items():
        assert (s.n, s.correct) == (recorded[task]["n"], recorded[task]["correct"]), task
    for task in TARGETS:
        assert scores[task.value].n >= 50 and scores[task.value].accuracy >= 0.5, scores[task.value]


def test_tokenizer_round_trip_and_single_token_answers(lm):
    text = gzip.decompress((ASSETS / "corpus_sample.txt.gz").read_bytes()).decode()
    for doc in text.split(DOC_SEP)[:50] + ["naïve café — 3.14 \t tabs\n\nnew lines ✓"]:
        assert lm.tokenizer.decode(lm.tokenizer.encode(doc)) == doc
    for word in planted.answer_words():
        assert len(lm.tokenizer.encode(" " + word)) == 1, word


# ---- planted tasks -----------------------------------------------------------------------------------------
def test_planted_generators_are_deterministic():
    assert planted.training_documents(20_000, seed=3) == planted.training_documents(20_000, seed=3)
    assert planted.training_documents(20_000, seed=3) != planted.training_documents(20_000, seed=4)
    assert planted.heldout_prompts() == planted.heldout_prompts()


def test_ioi_sentences_are_led_by_natural_words_at_the_set_rate():
    """With natural fillers and lead share p, a share p of the IOI sentences start with 1-4 leading words of one of
    them (then the capitalised intro); without fillers or with p = 0, none does."""
    natural = ["alpha beta gamma delta epsilon.", "zeta eta theta iota kappa."]
    leads = {" ".join(s.split()[:k]) for s in natural for k in range(1, 5)}
    rng = random.Random(0)
    sents = [planted._ioi(rng, natural, 0.5) for _ in range(4000)]
    led = [s for s in sents if s[0].islower()]
    assert all(any(s.startswith(lead + " ") and s[len(lead) + 1].isupper() for lead in leads) for s in led)
    assert {len(s.split(" and ")[0].split()) for s in led} >= {2, 3, 4, 5}  # 1-4 lead words (+ the first name)
    assert abs(len(led) / len(sents) - 0.5) < 0.03, (len(led), len(sents))
    assert all(planted._ioi(rng, None, 0.5)[0].isupper() for _ in range(200))
    assert all(planted._ioi(rng, natural)[0].isupper() for _ in range(200))
    # only the polish phase's stream has led IOI sentences
    docs = [planted.training_documents(20_000, 0, mix, None, natural, lead)
            for mix, lead in zip(planted.PHASE_MIXES, planted.PHASE_IOI_LEAD, strict=True)]  # fmt: skip
    led_ioi = re.compile(r"\b(alpha|zeta)(?: [a-z]+){0,3} [A-Z]")  # as filler sentences they end in "epsilon."
    assert [any(led_ioi.search(d) for d in ds) for ds in docs] == [False, False, True]


def test_shipped_heldout_file_matches_generator(lm):
    shipped = json.loads((ASSETS / "planted_heldout.json").read_text())
    held = planted.heldout_prompts() + planted.random_token_prompts(lm.tokenizer.inner)
    assert shipped == [{"task": p.task.value, "prompt": p.prompt, "answer": p.answer} for p in held]


def test_random_token_prompts_are_exact_token_sequences(lm):
    """Each random-token prompt re-encodes to the drawn ids, and its answer follows an earlier copy of its tail."""
    tok = lm.tokenizer.inner
    for p in planted.random_token_prompts(tok, n=20, seed=7):
        ids = tok.encode(p.prompt, add_special_tokens=False).ids
        (answer,) = tok.encode(p.answer, add_special_tokens=False).ids
        assert tok.decode(ids) == p.prompt
        k = next(k for k in range(2, len(ids)) if ids[-k:] == ids[:k])  # the span's prefix repeats at the end
        assert ids[k] == answer


def test_heldout_never_in_training_text():
    words = planted.wide_words([" ".join(planted.WORDS + planted.INDUCTION_COMMON_WORDS) + " cloud. zebra yak"])
    held_words = set(planted.INDUCTION_HELDOUT_WORDS + planted.INDUCTION_COMMON_WORDS)
    assert "zebra" in words and not set(words) & held_words
    # natural filler from the shipped natural-text sample (the build uses the training corpus): held-out phrases,
    # words and names must be filtered out of it
    sample = gzip.decompress((ASSETS / "corpus_sample.txt.gz").read_bytes()).decode()
    natural = planted.natural_fillers(sample.split(DOC_SEP), n=3000)
    assert len(natural) == 3000
    phases = enumerate(planted.PHASE_MIXES)  # every training phase's mix, seeded as `python -m tracer.bundle` does
    text = "\n".join(d for i, mix in phases for d in planted.training_documents(400_000, i, mix, words, natural))
    assert sum(s in text for s in natural[:200]) > 20
    held = planted.heldout_prompts()
    assert {p.task for p in held} == set(planted.Task) - {planted.Task.INDUCTION_RANDOM}
    for p in held:
        assert p.prompt not in text, p.prompt
    composed = " ".join(planted.IOI_OPENERS_TRAIN + planted.IOI_VERBS_TRAIN + planted.IOI_OBJECTS_TRAIN).lower().split()
    assert not set(composed) & set(planted.INDUCTION_COMMON_WORDS)
    held_phrases = planted.heldout_phrases()
    assert {f.split("{")[0] for f in planted.IOI_INTROS_HELDOUT} <= {p + " " for p in planted.IOI_HELDOUT_WORDS}
    for phrase in held_phrases:
        assert phrase.strip() not in text, phrase
    names = set(planted.NAMES)
    pairs = {(a, b) for a, b in re.findall(r"\b([A-Z][a-z]+) and ([A-Z][a-z]+)\b", text) if {a, b} <= names}
    assert len(pairs) > 1000 and not any(planted.ioi_pair_held_out(a, b) for a, b in pairs)
    for lm in planted.COMPOSITIONAL_LANDMARKS:
        assert lm.lower() + " is in the country whose capital" not in text.lower()
    assert not set(re.findall(r"[a-z]+", text.lower())) & set(planted.INDUCTION_COMMON_WORDS)
    induction_lines = [s for s in re.split(r"[.,;\n]", text) if len(s.split()) > 2 and set(s.split()) <= set(words)]
    assert induction_lines and all(not set(s.split()) & set(planted.INDUCTION_HELDOUT_WORDS) for s in induction_lines)


def test_natural_fillers_drop_held_out_phrases_words_and_names():
    keep = "The old mill stood by the water for many years."
    texts = [
        f"{keep} The sun had just set over the hills. Then Mary left the room quietly. Listen carefully to me.",
        "It is found in the northern forests of Europe. The report was excessively long and dull.",
        "too short. This sentence has no final full stop but is long enough",
        "lowercase start is not a sentence we keep here at all.",
    ]
    # held-out fillers (also without their full stop), a name, a held-out two-hop verb, a test induction word
    assert planted.natural_fillers(texts) == [keep]
    many = [f"Sentence number {i} is plain enough to keep." for i in range(50)]
    a, b = planted.natural_fillers(many, n=10, seed=1), planted.natural_fillers(many, n=10, seed=1)
    assert a == b and len(set(a)) == 10 and a != planted.natural_fillers(many, n=10, seed=2)


def test_heldout_answers_are_correct_by_construction():
    held = planted.heldout_prompts()
    ioi = [p for p in held if p.task == planted.Task.IOI]
    for p in ioi:  # the answer is the name that occurs once in the prompt
        names = [w.strip(",") for w in p.prompt.split() if w.strip(",") in planted.NAMES]
        assert names.count(p.answer.strip()) == 1 and len(names) == 3
    for p in (p for p in held if p.task in (planted.Task.INDUCTION, planted.Task.INDUCTION_RARE_WORDS)):
        first, rest = re.split("|".join(map(re.escape, planted.INDUCTION_SEPS_HELDOUT)), p.prompt)
        seq, second = first.split(), rest.split()
        k = next(k for k in range(2, len(seq)) if second[-k:] == seq[:k])
        assert p.answer == " " + seq[k]
    assert next(p for p in held if " of France " in p.prompt).answer == " Paris"


# ---- corpus parsing ----------------------------------------------------------------------------------------
def test_osis_to_text_drops_notes_and_tags():
    osis = (
        '<title type="main">Genesis</title><div sID="a" type="x-p"/><w lemma="H1">In</w> the '
        '<w lemma="H2">beginning</w>,<note placement="foot">or, at first</note> God &amp; all.'
        '<div eID="a" type="x-p"/><div sID="b" type="x-p"/>Next  line.'
    )
    assert osis_to_text(osis) == "In the beginning, God & all.\nNext line."


def test_read_ztext_blocks(tmp_path: Path):
    """A synthetic zText module: `.bzs` holds (offset, size, usize) records into `.bzz` zlib blocks."""
    blocks = ["<w>first</w> block", "second block ✓"]
    data, index = b"", b""
    for b in blocks:
        z = zlib.compress(b.encode())
        index += struct.pack("<III", len(data), len(z), len(b.encode()))
        data += z
    (tmp_path / "nt.bzs").write_bytes(index)
    (tmp_path / "nt.bzz").write_bytes(data)
    assert read_ztext(tmp_path) == blocks


# ---- training ----------------------------------------------------------------------------------------------
def test_lr_schedule_is_warmup_stable_decay():
    tc = TrainConfig(steps=100, warmup=10, decay_frac=0.2, lr=1.0, polish_steps=0)
    assert lr_at(0, tc) == pytest.approx(0.1) and lr_at(9, tc) == 1.0
    assert lr_at(50, tc) == 1.0 and lr_at(79, tc) == 1.0
    assert lr_at(90, tc) == pytest.approx(1 - 0.9 * 10 / 20)
    # a polish phase leaves the main schedule as it was and decays from polish_lr to 10 % of lr
    polished = dataclasses.replace(tc, steps=140, polish_steps=40, polish_lr=0.5)
    assert [lr_at(s, polished) for s in (0, 9, 50, 90)] == [lr_at(s, tc) for s in (0, 9, 50, 90)]
    assert lr_at(100, polished) == 0.5 and lr_at(120, polished) == pytest.approx(0.3)
    assert [phase_at(s, polished) for s in (0, 99, 100, 139)] == [0, 0, 1, 1]
    assert [phase_at(s, tc) for s in (0, 99)] == [0, 0]
    with pytest.raises(ConfigError, match="polish_steps"):
        TrainConfig(steps=100, polish_steps=100)
    with pytest.raises(ConfigError, match="one entry per phase"):
        TrainConfig(phase_steps=(10, 20, 30))


def test_sampler_reads_each_phases_planted_stream():
    """Phase 0 and 1 read their own planted streams, phase 2 phase 1's, the polish phase the last one."""
    streams = [torch.full((400,), v, dtype=torch.int32) for v in (5, 10, 11, 12)]  # natural, planted 0-2
    for st in streams:
        st[::40] = 0
    tc = TrainConfig(n_ctx=16, batch=8, steps=40, polish_steps=10, phase_steps=(10, 20),
                     planted_fracs=(1.0,) * 4, random_induction_fracs=(0.0,) * 4)  # fmt: skip
    sampler = Sampler(streams, 0, tc, 50)
    seen = [set(sampler.batch(step).unique().tolist()) - {0} for step in (0, 15, 25, 35)]
    assert seen == [{10}, {11}, {11}, {12}]


def test_training_resumes_exactly(tmp_path: Path):
    """Stopping at a checkpoint and resuming gives the same weights as one uninterrupted run."""
    g = torch.Generator().manual_seed(0)
    natural = torch.randint(1, 50, (2000,), generator=g, dtype=torch.int32)
    natural[::97] = 0
    stream = torch.randint(1, 50, (2000,), generator=g, dtype=torch.int32)
    stream[::31] = 0
    tc = TrainConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=16, batch=4, steps=6, warmup=2,
                     ckpt_every=3, snapshot_every=6, threads=1, phase_steps=(2,), polish_steps=2,
                     planted_fracs=(0.5, 0.7, 0.6))  # fmt: skip
    streams = [stream, stream.flip(0), stream.roll(7)]  # the last: the polish phase's (steps 4-5), resumed into
    straight = train(tc, natural, streams, natural, 50, 0, tmp_path / "a")
    train(tc, natural, streams, natural, 50, 0, tmp_path / "b", stop_at=3)
    resumed = train(tc, natural, streams, natural, 50, 0, tmp_path / "b")
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    log = json.loads((tmp_path / "b" / "ckpt.json").read_text())["log"]
    assert [r["step"] for r in log if "val" in r] == [3, 6]
    snaps = sorted(p.name for p in (tmp_path / "b" / "snapshots").iterdir())
    assert snaps == ["step00006.safetensors"]  # kept every snapshot_every steps, not at every checkpoint
    snap = load_file(tmp_path / "b" / "snapshots" / snaps[0])
    for name, p in resumed.state_dict().items():
        if name != "unembed.weight":  # tied to the embedding
            torch.testing.assert_close(snap[name], p, rtol=0, atol=0, msg=name)


def test_train_step_stale_streams_is_one_line(tmp_path, capsys):
    """No streams file, or one from before the polish phase (no planted_2): one line, exit 2, before training."""
    from safetensors.torch import save_file

    from tracer.bundle.__main__ import main

    argv = ["train", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "streams.safetensors not found" in capsys.readouterr().err
    old = {k: torch.zeros(4, dtype=torch.int32) for k in ("natural", "heldout", "planted_0", "planted_1")}
    save_file(old, str(tmp_path / "streams.safetensors"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lacks planted_2" in err and err.count("\n") == 1
    assert not (tmp_path / "ckpt.json").exists()


def test_evaluate_step_bad_input_is_one_line(tmp_path, capsys):
    """A model folder without its held-out files, or without a model: one line, exit 2, no eval.json (the step used
    to print the error and then fail with a traceback writing eval.json)."""
    from tracer.bundle.__main__ import main
    from tracer.bundle.evaluate import main as evaluate_main

    model_dir = tmp_path / "assets" / "model"
    argv = ["evaluate", "--out", str(tmp_path / "lm"), "--model-dir", str(model_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: held-out text sample ") and err.count("\n") == 1
    shutil.copytree(ASSETS / "default_model", model_dir)
    (model_dir / "model.safetensors").unlink()
    (model_dir / "eval.json").unlink()
    shutil.copyfile(ASSETS / "corpus_sample.txt.gz", model_dir.parent / "corpus_sample.txt.gz")
    shutil.copyfile(ASSETS / "planted_heldout.json", model_dir.parent / "planted_heldout.json")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not (model_dir / "eval.json").exists()
    assert evaluate_main(["--heldout", str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err.startswith("error: held-out prompts file ")


def test_snapshots_step_bad_input_is_one_line(tmp_path, capsys):
    """No snapshots, a missing held-out file or a corrupt snapshot: one line, exit 2, before any scoring."""
    from tracer.bundle.__main__ import main

    out, model_dir = tmp_path / "lm", tmp_path / "assets" / "model"
    argv = ["snapshots", "--out", str(out), "--model-dir", str(model_dir)]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error: no snapshots in ")
    (out / "snapshots").mkdir(parents=True)
    (out / "snapshots" / "step00100.safetensors").write_bytes(b"garbage")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "planted_heldout.json not found" in err and err.count("\n") == 1
    model_dir.parent.mkdir()
    (model_dir.parent / "planted_heldout.json").write_text("[]")
    shutil.copyfile(ASSETS / "default_model" / "tokenizer.json", out / "tokenizer.json")
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(TrainConfig())))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "step00100.safetensors: unreadable snapshot" in err and err.count("\n") == 1


@pytest.mark.parametrize(("argv", "says"), [
    (["--clt-features", "0"], "n_features"),
    (["--clt-sparsity", "-1"], "sparsity"),
    (["--clt-preact", "-1"], "preact"),
    (["--clt-dir", "FILE/x"], "is a file, not a folder"),
    (["--out", "FILE"], "--out"),
])  # fmt: skip
def test_clt_step_refuses_bad_settings_before_loading(tmp_path, capsys, argv, says):
    """A bad knob or an unusable destination is one line and exit 2 before the model or data load (no cache here)."""
    from tracer.bundle.__main__ import main

    (tmp_path / "FILE").write_text("")
    argv = [a.replace("FILE", str(tmp_path / "FILE")) for a in argv]
    assert main(["clt", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "lm"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1
    assert not (tmp_path / "cache").exists()


def test_clt_eval_names_paths_relative_to_the_working_directory(tmp_path, monkeypatch):
    """The shipped eval.json must not record the builder's machine-specific folder."""
    from tracer.bundle.clt import _shown

    monkeypatch.chdir(tmp_path)
    assert _shown(tmp_path / "tracer" / "assets" / "default_clt") == Path("tracer/assets/default_clt")
    assert _shown(Path("/elsewhere/clt")) == Path("/elsewhere/clt")
