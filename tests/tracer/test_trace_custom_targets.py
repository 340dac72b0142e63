"""`tracer trace --target TOK` (alone) and `--target A --minus B` (README "What a trace gives you", CLI reference): the
graph has exactly that one logit node, and every edge of the written (unpruned) graph equals the effect of perturbing
its source in the fp64 replacement model, read out along the direction written out here by hand: the demeaned
unembedding row W_U[a] - mean_v W_U[v] for one target, W_U[a] - W_U[b] for a difference."""

from __future__ import annotations

import pytest
import torch

from tests.tracer.test_attribution import perturbation_matrix
from tests.tracer.test_trace_cli import subject, trace  # noqa: F401  (module fixture: tiny model, tokenizer, CLT)
from tracer.graphfile import load_attribution, load_graph
from tracer.layout import NodeKind
from tracer.models import load_model
from transcoders import load_transcoders

PROMPT = "the cat sat on"
CAT, DOG = 27, 23  # the subject tokenizer's single tokens " cat" and " dog"


@pytest.fixture(scope="module")
def fp64(subject):  # noqa: F811
    lm = load_model(subject / "model", dtype=torch.float64)
    tc = load_transcoders(subject / "clt", lm.cfg, dtype=torch.float32).double()
    assert lm.tokenizer is not None
    assert lm.tokenizer.encode(" cat") == [CAT] and lm.tokenizer.encode(" dog") == [DOG]
    tokens = torch.tensor(lm.tokenizer.encode_prompt(PROMPT, lm.cfg.n_ctx, lm.cfg.bos_token_id))
    with torch.no_grad():
        probs = lm.model(tokens[None])[0, -1].softmax(-1)
    assert int(probs.argmax()) not in (CAT, DOG)  # the targets are not what the default trace would pick first
    return lm, tc, tokens, probs


def _traced(subject, tmp_path, capsys, name, *flags):  # noqa: F811
    out = tmp_path / f"{name}.json"
    assert trace(subject, PROMPT, "-o", str(out), "--json", *flags) == 0
    capsys.readouterr()
    return load_graph(out), load_attribution(out)


def _assert_matches_perturbation(fp64, attr, direction):
    lm, tc, tokens, _ = fp64
    expected = perturbation_matrix(lm.model, tc, attr, tokens, directions=direction[None])
    A = attr.adjacency.to_dense().double()
    rows = attr.layout.mask(NodeKind.FEATURE) | attr.layout.mask(NodeKind.LOGIT)
    got, want = A[rows], expected[rows]
    logit = attr.layout.logit_rows()
    assert (want[-1] != 0).sum() > 20 and bool(rows[logit].all()) and int(logit) == attr.layout.n_nodes - 1
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()  # fp32 trace against the fp64 reference
    assert (got[-1] - want[-1]).abs().max() <= 1e-5 * want[-1].abs().max()  # the logit row on its own scale


def test_target_alone_is_one_logit_node_with_exact_edges(subject, tmp_path, capsys, fp64):  # noqa: F811
    graph, attr = _traced(subject, tmp_path, capsys, "cat", "--target", " cat")
    logits = [x for x in graph.nodes if x.kind is NodeKind.LOGIT]
    assert [x.token_id for x in logits] == [CAT] and attr.layout.count(NodeKind.LOGIT) == 1
    _, _, tokens, probs = fp64
    assert logits[0].probability == pytest.approx(float(probs[CAT]), rel=1e-5)  # its weight: its probability
    assert graph.metadata.settings["target"] == [" cat"] and graph.metadata.settings["minus"] is None
    W = fp64[0].model.unembed.weight
    _assert_matches_perturbation(fp64, attr, W[CAT] - W.mean(0))


def test_target_minus_edges_are_the_difference(subject, tmp_path, capsys, fp64):  # noqa: F811
    graph, diff = _traced(subject, tmp_path, capsys, "diff", "--target", " cat", "--minus", " dog")
    logits = [x for x in graph.nodes if x.kind is NodeKind.LOGIT]
    assert [x.token_id for x in logits] == [CAT] and logits[0].probability == 1.0  # weight 1 for a difference
    W = fp64[0].model.unembed.weight
    _assert_matches_perturbation(fp64, diff, W[CAT] - W[DOG])
    _, cat = _traced(subject, tmp_path, capsys, "cat", "--target", " cat")
    _, dog = _traced(subject, tmp_path, capsys, "dog", "--target", " dog")
    D, C, G = (a.adjacency.to_dense().double() for a in (diff, cat, dog))
    assert torch.equal(diff.layout.features, cat.layout.features)
    torch.testing.assert_close(D[:-1], C[:-1], atol=0, rtol=0)  # feature rows do not depend on the target
    want = C[-1] - G[-1]  # linear in the read-out direction: (a - mean) - (b - mean) = a - b
    assert want.abs().max() > 0.1
    torch.testing.assert_close(D[-1], want, atol=1e-5 * float(want.abs().max()), rtol=0)
