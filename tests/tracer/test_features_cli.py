"""`tracer features build | show | search | export` and trace labels on the planted subject; bad input -> exit 2."""

from __future__ import annotations

import json

import pytest

from tests.tracer import features_subject as subj
from tracer.cli import main
from tracer.export import cantor_pair
from tracer.graphfile import load_graph
from transcoders import save_transcoders

CT_FIELDS = {"transcoder_id", "index", "examples_quantiles", "top_logits", "bottom_logits", "act_min", "act_max",
             "quantile_values", "histogram", "activation_frequency"}  # fmt: skip
EXAMPLE_FIELDS = {"tokens", "tokens_acts_list", "train_token_ind", "is_repeated_datapoint"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("features_cli")
    model, clt, corpus = subj.save_subject(root)
    args = ["features", "build", "--model", str(model), "--transcoders", str(clt), "--corpus", str(corpus),
            "--tokens", "1500", "--seq-len", "32", "--batch-seqs", "8", "--json"]  # fmt: skip
    assert main(args) == 0
    return root, model, clt


def run(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_build_show_search_json(built, capsys):
    _, _, clt = built
    assert (clt / "features.sqlite").is_file()
    rc, out, _ = run(capsys, "features", "show", "0/3", "--transcoders", str(clt), "--json")
    info = json.loads(out)
    assert rc == 0 and info["top_logits"][0][0] == "Paris" and "France" in info["label"]
    rc, out, _ = run(capsys, "features", "show", "F0.3", "--transcoders", str(clt))
    assert rc == 0 and "[France]" in out and "Paris" in out
    rc, out, _ = run(capsys, "features", "search", "France", "--transcoders", str(clt), "--json")
    assert rc == 0 and json.loads(out)[0]["layer"] == 0 and json.loads(out)[0]["feature"] == 3


def test_export_neuronpedia_fields(built, tmp_path, capsys):
    _, _, clt = built
    rc, _, _ = run(capsys, "features", "export", "--to", "neuronpedia", "-o", str(tmp_path), "--transcoders", str(clt),
                   "--features", "0/3", "1/2")  # fmt: skip
    assert rc == 0
    doc = json.loads((tmp_path / f"{cantor_pair(0, 3)}.json").read_text())
    assert set(doc) == CT_FIELDS and doc["index"] == cantor_pair(0, 3) and doc["transcoder_id"] == "clt"
    assert doc["top_logits"][0] == "Paris"
    top = doc["examples_quantiles"][0]
    assert top["quantile_name"] == "Top activations"
    for ex in top["examples"]:
        assert set(ex) == EXAMPLE_FIELDS and ex["tokens"][ex["train_token_ind"]] == "France"
        assert len(ex["tokens"]) == len(ex["tokens_acts_list"])
    assert doc["act_max"] == pytest.approx(max(max(e["tokens_acts_list"]) for e in top["examples"]), rel=1e-3)
    assert sum(doc["histogram"]) > 0 and 0 < doc["activation_frequency"] < 1
    assert (tmp_path / f"{cantor_pair(1, 2)}.json").is_file()


def test_trace_carries_store_labels(built, tmp_path, capsys):
    _, model, clt = built
    out = tmp_path / "g.json"
    rc, text, _ = run(capsys, "trace", "the old city of France", "--model", str(model), "--transcoders", str(clt),
                      "-o", str(out), "--node-threshold", "1.0")  # fmt: skip
    assert rc == 0 and "top features" in text
    graph = load_graph(out)
    planted = [n for n in graph.nodes if n.id == "F0.3@5"]
    assert planted and "France" in planted[0].label
    assert graph.metadata.settings["feature_store"] == str((clt / "features.sqlite").resolve())
    rc, text, _ = run(capsys, "features", "show", "--graph", str(out), "--top", "2", "--transcoders", str(clt),
                      "--json")  # fmt: skip
    top = sorted((n for n in graph.nodes if n.kind.value == "feature"), key=lambda n: -n.influence)[:2]
    assert rc == 0 and [(d["layer"], d["feature"]) for d in json.loads(text)] == [(n.layer, n.feature) for n in top]


@pytest.mark.parametrize("case", ["unknown-id", "bad-id", "no-id", "other-transcoders", "corrupt", "missing-store",
                                  "missing-corpus", "empty-corpus", "unwritable"])  # fmt: skip
def test_bad_input_is_one_line_exit_2(built, tmp_path, capsys, case):
    root, model, clt = built
    if case == "other-transcoders":
        other = subj.transcoder(subj.model(), n_features=8)
        other.W_enc.data[0, 0, 5] += 1.0
        save_transcoders(other, tmp_path / "other")
    (tmp_path / "corrupt.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x13" * 500)
    (tmp_path / "empty.txt").write_text("")
    show = ["features", "show", "--transcoders", str(clt)]
    build = ["features", "build", "--model", str(model), "--transcoders", str(clt), "-s", str(tmp_path / "n.sqlite")]
    args = {"unknown-id": [*show, "0/99"], "bad-id": [*show, "zero/three"], "no-id": show,
            "other-transcoders": ["features", "show", "0/3", "--store", str(clt / "features.sqlite"),
                                  "--transcoders", str(tmp_path / "other")],
            "corrupt": ["features", "show", "0/3", "--store", str(tmp_path / "corrupt.sqlite")],
            "missing-store": ["features", "search", "x", "--store", str(tmp_path / "nope.sqlite")],
            "missing-corpus": [*build, "--corpus", str(tmp_path / "nope.txt")],
            "empty-corpus": [*build, "--corpus", str(tmp_path / "empty.txt")],
            "unwritable": [*build[:-2], "-s", "/proc/no/such.sqlite"]}[case]  # fmt: skip
    rc, out, err = run(capsys, *args)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "n.sqlite").exists()  # nothing written before the corpus check
