"""`tracer trace` storage and speed options: --no-sidecar, --sidecar-dtype fp16 (then `tracer prune` re-prunes
from it), --row-dtype bf16, and a summary whose phases account for the whole process; subcommand parsers import no torch
(`tracer --help` stays fast)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from tests.tracer.test_trace_cli import subject, trace  # noqa: F401 (module-scoped fixture)
from tracer.cli import SUBCOMMAND_MODULES, main
from tracer.export import ExportFormat
from tracer.graph_cli import EXPORT_FORMATS
from tracer.graphfile import load_attribution, load_graph


def test_no_sidecar_writes_the_json_alone(subject, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "g.json"
    assert trace(subject, "the cat sat", "-o", str(out), "--no-sidecar", "--json") == 0
    capsys.readouterr()
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]
    assert load_graph(out).metadata.adjacency_file is None


def test_fp16_sidecar_reprunes(subject, tmp_path, capsys):  # noqa: F811
    out32, out16 = tmp_path / "a.json", tmp_path / "b.json"
    assert trace(subject, "the dog ate", "-o", str(out32), "--json") == 0
    assert trace(subject, "the dog ate", "-o", str(out16), "--json", "--sidecar-dtype", "fp16") == 0
    capsys.readouterr()
    a32, a16 = load_attribution(out32), load_attribution(out16)
    assert a16.adjacency.values.dtype == torch.float16
    assert torch.equal(a16.adjacency.values, a32.adjacency.values.half())
    assert main(["prune", str(out16), "--node-threshold", "0.9", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nodes_after"] > 0


def test_bf16_rows_and_timings_cover_the_process(subject, tmp_path, capsys):  # noqa: F811
    assert trace(subject, "a cat and", "-o", str(tmp_path / "g.json"), "--json", "--row-dtype", "bf16") == 0
    s = json.loads(capsys.readouterr().out)
    t = s["timings"]
    for name in ("imports", "feature_rows", "assemble", "prune", "graph_file", "write", "free", "total"):
        assert name in t and t[name] >= 0
    assert sum(v for k, v in t.items() if k != "total") <= t["total"] * 1.05 + 0.05
    assert load_graph(tmp_path / "g.json").metadata.settings["row_dtype"] == "bf16"


LAZY = list(SUBCOMMAND_MODULES)


def test_subcommand_parsers_import_no_torch():
    code = ("import argparse, importlib, sys\n"
            f"sub = argparse.ArgumentParser().add_subparsers()\nfor m in {LAZY!r}:\n"
            "    importlib.import_module(m).add_parser(sub)\n"
            "print(sorted(m for m in ('torch', 'dash', 'pandas', 'transformers') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_export_choices_match_the_enum():
    assert set(EXPORT_FORMATS) == {f.value for f in ExportFormat}
