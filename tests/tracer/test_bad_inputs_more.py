"""More of README "What we promise and how it is tested", beside tests/tracer/test_bad_inputs.py (same subject, same
checks: exit 2, one `error:` line, no traceback, nothing new or changed in the case's tmp folder):

1. NaN/Inf after the forward pass: weights that are all finite but whose logits or a norm's input overflow, and NaN
   in a decoder that `trace` reads lazily (so it is not scanned at load), are refused from the recorded logits,
   error vectors and norm denominators;
2. check order: with the work replaced by a failure (the trace for `trace`, parsing the graph for `prune` and
   `export`), each bad threshold, output or missing sidecar still ends in its one error line, so the checks ran first;
   a control shows the replaced work is what a good input reaches.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tracer.attribute
import tracer.graphfile
from tests.tracer.bad_inputs import CASES, Case, Ctx, edit_tensors, prune
from tests.tracer.test_bad_inputs import make_ctx, run_case, subject  # noqa: F401 (fixture)
from tracer.cli import main
from tracer.graphfile import sidecar_path
from tracer.pipeline import Tracer

# 1. non-finite values after the forward pass


def overflow(t: dict[str, torch.Tensor]) -> None:
    """Finite weights whose logits overflow fp32: final norm and unembedding of 1e30 give logits ~1e60."""
    t["model.norm.weight"].fill_(1e30)
    t["lm_head.weight"].fill_(1e30)


def norm_overflow(t: dict[str, torch.Tensor]) -> None:
    """A finite 1e30 in an MLP's output: the next norm's denominator overflows to inf and zeroes the residual, so
    logits, activations and errors all stay finite (a meaningless graph) unless the denominators are checked."""
    t["model.layers.1.mlp.down_proj.weight"][0, 0] = 1e30


def nan_decoder(t: dict[str, torch.Tensor]) -> None:
    """NaN in every layer-0 decoder row (the encoder is clean; `trace` memory-maps the decoders, unscanned)."""
    t["W_dec_0"].fill_(float("nan"))


FORWARD = "forward pass on this prompt (overflow, or NaN in lazily read decoders)"
FORWARD_CASES = [
    Case("model-overflow", "trace", "finite weights whose logits overflow (final norm and unembedding 1e30)",
         f"{FORWARD}: tensor logits has a non-finite value (inf", "tensor logits",
         lambda c: c.trace(model=c.model(lambda d: edit_tensors(d / "model.safetensors", overflow)))),
    Case("model-norm-overflow", "trace", "finite weights whose residual overflows a norm (an MLP weight 1e30)",
         f"{FORWARD}: tensor norm denominators has a non-finite value (inf", "tensor norm denominators",
         lambda c: c.trace(model=c.model(lambda d: edit_tensors(d / "model.safetensors", norm_overflow)))),
    Case("clt-decoder-nan", "trace", "NaN in a transcoder decoder (read lazily, not scanned at load)",
         f"{FORWARD}: tensor errors has a non-finite value (nan", "tensor errors",
         lambda c: c.trace(clt=c.clt(lambda d: edit_tensors(d / "decoder.safetensors", nan_decoder)))),
]  # fmt: skip


@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: c.id)
def test_nonfinite_forward_pass_is_one_line(case: Case, subject, tmp_path, capsys):  # noqa: F811
    run_case(case, make_ctx(subject, tmp_path), capsys)


# 2. check order: cheap checks before the trace / before the graph is parsed


def trace_to(c: Ctx, out: Path, *extra: str) -> list[str]:
    return [*c.trace("the cat", *extra)[: -2 - len(extra)], "-o", str(out), *extra]


def batch(c: Ctx, *extra: str) -> list[str]:
    prompts = c.tmp / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "the cat sat"}) + "\n")
    return ["trace", "--prompts", str(prompts), "--model", str(c.model()), "--transcoders", str(c.clt()),
            "-o", str(c.out / "batch"), *extra]  # fmt: skip


def sidecar_dir(c: Ctx, graph: Path) -> Path:
    """`graph` (a NAME.json to write) whose sidecar name is taken by a folder."""
    sidecar_path(graph).mkdir()
    return graph


def by_id(*ids: str) -> list[Case]:
    return [next(c for c in CASES if c.id == i) for i in ids]


TRACE_EARLY = by_id("node-threshold", "nan-threshold", "threads", "out-is-dir", "out-trailing-slash",
                    "out-parent-file") + [
    Case("out-suffix", "trace", "-o NAME.txt", "must be named NAME.json", "{c.out}/g.txt",
         lambda c: trace_to(c, c.out / "g.txt")),
    Case("out-sidecar-dir", "trace", "-o NAME.json whose sidecar name is a folder",
         "new.adjacency.safetensors is a directory", "{c.out}/new.adjacency.safetensors",
         lambda c: trace_to(c, sidecar_dir(c, c.out / "new.json"))),
    Case("batch-threshold", "trace", "--prompts with --edge-threshold 1.5", "edge_threshold must be in [0, 1], got 1.5",
         "got 1.5", lambda c: batch(c, "--edge-threshold", "1.5")),
    Case("batch-threads", "trace", "--prompts with --threads -1", "--threads must be >= 0", "got -1",
         lambda c: batch(c, "--threads", "-1")),
]  # fmt: skip

PARSE_EARLY = by_id("prune-threshold", "prune-out-dir", "prune-out-parent-file", "sidecar-missing", "graph-missing",
                    "graphml-out-dir", "neuronpedia-out-file") + [
    Case("prune-edge-nan", "prune", "--edge-threshold nan", "edge_threshold must be in [0, 1], got nan", "got nan",
         lambda c: prune(c, "--edge-threshold", "nan")),
    Case("prune-out-suffix", "prune", "-o NAME.txt", "must be named NAME.json", "{c.tmp}/p.txt",
         lambda c: prune(c, "-o", str(c.tmp / "p.txt"))),
    Case("prune-out-sidecar-dir", "prune", "-o NAME.json whose sidecar name is a folder",
         "p.adjacency.safetensors is a directory", "{c.tmp}/p.adjacency.safetensors",
         lambda c: prune(c, "-o", str(sidecar_dir(c, c.tmp / "p.json")))),
]  # fmt: skip


def fail(what: str):
    def ran(*args, **kwargs):
        raise AssertionError(f"{what} before the checks")

    return ran


@pytest.fixture
def no_work(monkeypatch) -> None:
    """The trace and the graph parsing replaced by an AssertionError (which main does not catch)."""
    monkeypatch.setattr(Tracer, "trace_to", fail("the trace ran"))
    monkeypatch.setattr(tracer.attribute, "attribute", fail("attribution ran"))
    monkeypatch.setattr(tracer.graphfile, "load_graph", fail("the graph was parsed"))
    monkeypatch.setattr(tracer.graphfile, "load_attribution", fail("the sidecar was read"))


@pytest.mark.parametrize("case", TRACE_EARLY + PARSE_EARLY, ids=lambda c: f"{c.command}-{c.id}")
def test_cheap_checks_come_before_the_work(case: Case, subject, tmp_path, capsys, no_work):  # noqa: F811
    run_case(case, make_ctx(subject, tmp_path), capsys)


def test_the_replaced_work_is_what_a_good_input_reaches(subject, tmp_path, no_work):  # noqa: F811
    """Control: without a bad input each command gets to the replaced work (else the order test proves nothing)."""
    ctx = make_ctx(subject, tmp_path)
    runs = [
        (ctx.trace("the cat"), "the trace ran"),
        (batch(ctx), "the trace ran"),
        (prune(ctx, "--node-threshold", "0.5"), "the graph was parsed"),
        (["export", str(ctx.graph), "--to", "graphml", "-o", str(ctx.tmp / "g.graphml")], "the graph was parsed"),
    ]
    for argv, what in runs:
        with pytest.raises(AssertionError, match=f"^{what} before the checks$"):
            main(argv)
