"""`tracer prune` and `tracer export` end to end on a saved synthetic graph."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from tests.tracer.graph_fixtures import random_attribution
from tracer.cli import main
from tracer.graphfile import build_graph_file, load_attribution, load_graph, save_graph
from tracer.prune import prune
from tracer.schema import Identity

ID = Identity(name="tiny", content_hash="0", kind="")


@pytest.fixture
def graph_path(tmp_path):
    attr = random_attribution(n_layers=3, n_pos=6, seed=4)
    g = build_graph_file(attr, prune(attr), prompt="hi there", model=ID, transcoders=ID, settings={})
    return save_graph(tmp_path / "g.json", g, attr)


def test_prune_in_place_json(graph_path, capsys):
    before = load_graph(graph_path)
    assert main(["prune", str(graph_path), "--node-threshold", "0.5", "--edge-threshold", "0.9", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    after = load_graph(graph_path)
    assert (s["nodes_before"], s["nodes_after"], s["edges_after"]) == (len(before.nodes), len(after.nodes),
                                                                      len(after.edges))  # fmt: skip
    assert s["nodes_after"] < s["nodes_before"] and after.metadata.settings["node_threshold"] == 0.5


def test_prune_to_new_file_carries_sidecar(graph_path, tmp_path, capsys):
    out = tmp_path / "sub" / "small.json"
    assert main(["prune", str(graph_path), "--node-threshold", "0.6", "-o", str(out)]) == 0
    assert "graph: " in capsys.readouterr().out
    assert load_graph(out).metadata.adjacency_file == "small.adjacency.safetensors"
    assert load_attribution(out).layout.n_nodes == load_attribution(graph_path).layout.n_nodes


def test_export_both_formats(graph_path, tmp_path):
    assert main(["export", str(graph_path), "--to", "neuronpedia", "-o", str(tmp_path / "np")]) == 0
    doc = json.loads((tmp_path / "np" / "hi-there.json").read_text())
    assert len(doc["nodes"]) == len(load_graph(graph_path).nodes)
    assert main(["export", str(graph_path), "--to", "graphml", "-o", str(tmp_path / "g.graphml")]) == 0
    assert nx.read_graphml(tmp_path / "g.graphml").number_of_nodes() == len(doc["nodes"])


def test_errors_are_one_line(tmp_path, graph_path, capsys):
    assert main(["prune", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: graph file not found") and err.count("\n") == 1
    assert main(["prune", str(graph_path), "--node-threshold", "2"]) == 2
    assert "node_threshold must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(graph_path), "--to", "pdf", "-o", str(tmp_path / "x")])
