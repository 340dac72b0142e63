"""`tracer trace` end to end on a tiny saved model, tokenizer and CLT; bad input gives one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer as HFTok
from tokenizers import models, pre_tokenizers, trainers

from tests.conftest import random_model, tiny_config
from tests.tracer.test_attribution import random_transcoder
from tracer.cli import main
from tracer.graphfile import load_attribution, load_graph
from tracer.layout import NodeKind
from tracer.models import HookPoint, save_hf
from transcoders import TranscoderKind, save_transcoders

TEXT = ["the cat sat on the mat", "the dog ate the bone", "a cat and a dog", "on the mat sat a dog"] * 20


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("subject")
    tok = HFTok(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # type: ignore[assignment]
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>"]))
    cfg = tiny_config("llama", vocab_size=tok.get_vocab_size(), bos_token_id=1, eos_token_id=1)
    model = random_model(cfg, dtype=torch.float32)
    save_hf(cfg, model.state_dict(), root / "model")
    tok.save(str(root / "model" / "tokenizer.json"))
    tc = random_transcoder(model, TranscoderKind.CLT, HookPoint.MLP_IN, False).float()
    save_transcoders(tc, root / "clt")
    wrong = random_transcoder(random_model(tiny_config("llama", d_model=8, n_heads=2, n_kv_heads=1)),
                              TranscoderKind.CLT, HookPoint.MLP_IN, False).float()  # fmt: skip
    save_transcoders(wrong, root / "wrong")
    return root


def trace(subject, *args):
    return main(["trace", *args, "--model", str(subject / "model"), "--transcoders", str(subject / "clt")])


def test_trace_writes_graph_and_summary(subject, tmp_path, capsys):
    out = tmp_path / "g.json"
    assert trace(subject, "the cat sat on", "-o", str(out), "--json", "--batch-size", "7") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"] == str(out) and summary["nodes_pruned"] <= summary["nodes_unpruned"]
    assert 0 <= summary["replacement_score"] <= 1 and 0 <= summary["completeness_score"] <= 1
    assert summary["stats"]["replacement_max_abs_logit_error"] < 1e-4
    graph = load_graph(out)
    kinds = {n.kind for n in graph.nodes}
    assert {NodeKind.EMBEDDING, NodeKind.LOGIT} <= kinds
    assert graph.metadata.tokens[0] == "<s>" and graph.metadata.prompt == "the cat sat on"
    attr = load_attribution(out)
    assert attr.adjacency.nnz == graph.metadata.n_edges_unpruned
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.adjacency.safetensors", "g.json"]  # no temp files


def test_custom_target_difference(subject, tmp_path, capsys):
    out = tmp_path / "d.json"
    assert trace(subject, "the cat sat on", "-o", str(out), "--json", "--target", "the", "--minus", "a") == 0
    summary = json.loads(capsys.readouterr().out)
    assert [t["token"] for t in summary["top_logits"]] == ["the − a"]


@pytest.mark.parametrize(
    ("prompt", "extra", "message"),
    [
        ("   ", [], "the prompt is empty"),
        ("the cat " * 40, [], "context window is 32"),
        ("the cat", ["--target", "the cat"], "not one"),
    ],
)
def test_bad_input_one_line_error(subject, tmp_path, capsys, prompt, extra, message):
    assert trace(subject, prompt, "-o", str(tmp_path / "x.json"), *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_mismatched_transcoders(subject, tmp_path, capsys):
    code = main(["trace", "the cat", "--model", str(subject / "model"), "--transcoders", str(subject / "wrong"),
                 "-o", str(tmp_path / "x.json")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "d_model" in err and err.count("\n") == 1


def test_missing_model(tmp_path, capsys):
    assert main(["trace", "x", "--model", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
