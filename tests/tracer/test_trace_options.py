"""`tracer trace` options reach the trace (README CLI reference and `--dtype`): --max-feature-nodes, --edge-topk and
--threads against the library with the same TraceConfig and the exact full trace; --dtype fp16 runs the model in fp16
with fp32 attribution, closer to the fp32 trace than bf16 and not identical to it."""

from __future__ import annotations

import torch

from tests.tracer.test_trace_cli import subject, trace  # noqa: F401  (module fixture: tiny model, tokenizer, CLT)
from tracer.attribute import TraceConfig, attribute
from tracer.graphfile import load_attribution, load_graph
from tracer.layout import NodeKind
from tracer.models import load_model
from transcoders import load_transcoders

PROMPT = "the cat sat on"


def _traced(subject, tmp_path, capsys, name, *flags):  # noqa: F811
    out = tmp_path / f"{name}.json"
    assert trace(subject, PROMPT, "-o", str(out), "--json", *flags) == 0
    capsys.readouterr()
    return load_graph(out), load_attribution(out)


def _library(subject, cfg):  # noqa: F811
    lm = load_model(subject / "model", dtype=torch.float32)
    tc = load_transcoders(subject / "clt", lm.cfg, dtype=torch.float32, lazy=True)
    assert lm.tokenizer is not None
    tokens = torch.tensor(lm.tokenizer.encode_prompt(PROMPT, lm.cfg.n_ctx, lm.cfg.bos_token_id))
    return attribute(lm.model, tc, tokens, lm.tokenizer, cfg)


def test_feature_budget_and_edge_topk_reach_the_trace(subject, tmp_path, capsys):  # noqa: F811
    graph, got = _traced(subject, tmp_path, capsys, "b", "--max-feature-nodes", "5", "--edge-topk", "3",
                         "--batch-size", "2")  # fmt: skip
    settings = graph.metadata.settings
    assert (settings["max_feature_nodes"], settings["edge_topk"], settings["batch_size"]) == (5, 3, 2)
    lay = got.layout
    G = got.adjacency.to_dense().double()
    nnz = (G != 0).sum(1)
    assert int((nnz[lay.feature_rows()] > 0).sum()) == 5 < lay.count(NodeKind.FEATURE)  # the budget of feature rows
    assert int(nnz.max()) == 3 and bool((nnz[lay.logit_rows()] == 3).all())  # each row's 3 largest |edges|
    assert graph.metadata.n_edges_unpruned == got.adjacency.nnz
    # the same as the library with the same TraceConfig
    ref = _library(subject, TraceConfig(max_feature_nodes=5, edge_topk=3, batch_size=2))
    assert torch.equal(ref.layout.features, lay.features)
    R = ref.adjacency.to_dense().double()
    assert torch.equal(R != 0, G != 0)
    torch.testing.assert_close(G, R, atol=1e-6, rtol=1e-6)
    # and each kept row is the top 3 of the exact full row (the full trace is checked against perturbation)
    _, full = _traced(subject, tmp_path, capsys, "full")
    F = full.adjacency.to_dense().double()
    assert torch.equal(full.layout.features, lay.features)
    for row in (nnz > 0).nonzero()[:, 0].tolist():
        top = F[row].abs().topk(3).indices
        assert sorted(top.tolist()) == sorted((G[row] != 0).nonzero()[:, 0].tolist())
        torch.testing.assert_close(G[row, top], F[row, top], atol=1e-6, rtol=1e-5)


def test_threads_are_set(subject, tmp_path, capsys):  # noqa: F811
    before = torch.get_num_threads()
    want = 3 if before != 3 else 2
    try:
        _traced(subject, tmp_path, capsys, "t", "--threads", str(want))
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


def test_fp16_trace(subject, tmp_path, capsys):  # noqa: F811
    """README: `--dtype fp16`: the model's weights and forward pass in fp16, record upcast, fp32 backward."""
    assert load_model(subject / "model", dtype=torch.float16).model.embed.weight.dtype == torch.float16
    _, a = _traced(subject, tmp_path, capsys, "f32")
    g16, h = _traced(subject, tmp_path, capsys, "f16", "--dtype", "fp16")
    _, b = _traced(subject, tmp_path, capsys, "b16", "--dtype", "bf16")
    assert g16.metadata.settings["row_dtype"] == "fp32"  # --row-dtype auto: fp32 rows unless the model is bf16
    assert torch.equal(a.layout.features, h.layout.features) and torch.equal(a.layout.features, b.layout.features)
    assert h.adjacency.values.dtype == torch.float32
    A, H, B = (x.adjacency.to_dense().double() for x in (a, h, b))
    err16, errbf = float((H - A).norm() / A.norm()), float((B - A).norm() / A.norm())
    assert 1e-5 < err16 < 0.005  # fp16 rounding (10 mantissa bits): really fp16, not fp32
    assert err16 < errbf / 3  # and not bf16 (7 mantissa bits)
    assert 0 < h.stats["replacement_max_abs_logit_error"] < 0.01
    torch.testing.assert_close(h.logit_probs.double(), a.logit_probs.double(), atol=2e-3, rtol=0)
