"""`--dtype` / `--device`: a bf16 trace of a tiny model matches the fp32 one within bf16 rounding; bad devices are
one-line errors before any loading."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tracer.test_trace_cli import subject  # noqa: F401  (module fixture: tiny model, tokenizer, CLT)
from tracer.cli import main
from tracer.graphfile import load_attribution
from tracer.models import load_model


def _trace(subject, out, *extra):  # noqa: F811
    return main(["trace", "the cat sat on", "--model", str(subject / "model"), "--transcoders", str(subject / "clt"),
                 "-o", str(out), "--json", *extra])  # fmt: skip


def test_bf16_trace_matches_fp32(subject, tmp_path, capsys):  # noqa: F811
    assert _trace(subject, tmp_path / "f.json") == 0
    capsys.readouterr()
    assert _trace(subject, tmp_path / "b.json", "--dtype", "bf16") == 0
    summary = json.loads(capsys.readouterr().out)
    assert load_model(subject / "model", dtype=torch.bfloat16).model.embed.weight.dtype == torch.bfloat16
    a, b = load_attribution(tmp_path / "f.json"), load_attribution(tmp_path / "b.json")
    assert a.layout.n_nodes > 0
    assert torch.equal(a.layout.features, b.layout.features)  # seeded: no feature crosses its threshold in bf16
    A, B = a.adjacency.to_dense().double(), b.adjacency.to_dense().double()
    assert (A - B).norm() / A.norm() < 0.05  # bf16 forward pass, fp32 sums
    assert summary["stats"]["replacement_max_abs_logit_error"] < 0.1  # bf16 model, reproduced to its rounding


@pytest.mark.parametrize("device,msg", [("gpu", "expected cpu, cuda or cuda:N"), ("cuda:99", "cuda:99")])
def test_bad_device_is_one_line(subject, tmp_path, capsys, device, msg):  # noqa: F811
    assert _trace(subject, tmp_path / "g.json", "--device", device) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and msg in err
    assert not (tmp_path / "g.json").exists()
