"""`tracer diff --top/--view`, the diff viewer's 10 % boundary, graphs of other transcoders refused, `tracer common`
over a batch index.json with -o, and `tracer supernodes --threshold` and its feature-store labels, on hand-built
graphs (tests/tracer/test_compare.py) whose expected output is worked out by hand."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path

import dash
import pytest

from tests.tracer.test_compare import CAPITAL, capital, emb, feat, graph, logit
from tracer.batch import BatchIndex, Entry, write_index
from tracer.cli import main
from tracer.compare import diff, format_diff
from tracer.features import store_path
from tracer.graphfile import load_graph, save_graph
from tracer.models.loading import file_hash
from transcoders import DEFAULT_TRANSCODERS
from viewer.diff import SAME, node_colours


def sections(text: str) -> dict[str, list[str]]:
    """format_diff's text: section title -> the first word of each of its rows."""
    out: dict[str, list[str]] = {}
    title = ""
    for line in text.splitlines():
        if line.startswith("  "):
            out[title].append(line.split()[0])
        elif line.endswith(":"):
            title = line.split(" (")[0].split(",")[0].rstrip(":")
            out[title] = []
    return out


@pytest.fixture
def pair(tmp_path):
    """A: the France graph plus 12 features only in A (influence 0.01..0.12); B: the Germany graph."""
    a = capital(10, 5, 20, " Paris")
    a.nodes += [feat(1, 100 + i, 3, 0.01 * (i + 1)) for i in range(12)]
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    save_graph(pa, a)
    save_graph(pb, capital(11, 6, 21, " Berlin", 0.25))
    return pa, pb


def test_diff_top_rows_per_section(pair, capsys):
    pa, pb = pair
    extras = [f"F1.{100 + i}@-3" for i in range(11, -1, -1)]  # largest influence first
    assert main(["diff", str(pa), str(pb)]) == 0
    s = sections(capsys.readouterr().out)
    # 15 nodes only in A: the logit (probability 0.6), F1.5 (0.3), the embedding (0.2), then the extras; 10 shown
    assert s["only in A"] == ["LOGIT20", "F1.5@-2", "EMB10@-2", *extras[:7]]
    assert s["only in B"] == ["LOGIT21", "F1.6@-2", "EMB11@-2"]
    assert s["shared"] == ["F2.7@-1", "EMB5@-4"]  # |Δ| 0.25, then 0
    assert main(["diff", str(pa), str(pb), "--top", "2"]) == 0
    s = sections(capsys.readouterr().out)
    assert s["only in A"] == ["LOGIT20", "F1.5@-2"] and s["only in B"] == ["LOGIT21", "F1.6@-2"]
    assert s["shared"] == ["F2.7@-1", "EMB5@-4"] and s["shared edges"] == ["EMB5@-4"]
    assert main(["diff", str(pa), str(pb), "--top", "0"]) == 0
    assert all(rows == [] for rows in sections(capsys.readouterr().out).values())
    assert main(["diff", str(pa), str(pb), "--top", "-1"]) == 2
    assert capsys.readouterr().err == "error: --top must be >= 0\n"


def components(c) -> list:
    """Every component of a Dash layout tree."""
    kids = getattr(c, "children", None)
    kids = kids if isinstance(kids, list) else [kids] if kids is not None and not isinstance(kids, str) else []
    return [c, *(x for k in kids for x in components(k))]


def test_diff_view_serves_both_graphs_coloured(pair, monkeypatch, capsys):
    pa, pb = pair
    served = []
    monkeypatch.setattr(dash.Dash, "run", lambda self, **kw: served.append((self, kw)))
    assert main(["diff", str(pa), str(pb), "--view", "--port", "8123"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("diff viewer: http://127.0.0.1:8123/  (Ctrl-C to stop)")
    (app, kw), = served  # fmt: skip
    assert kw == {"host": "127.0.0.1", "port": 8123, "debug": False}
    a, b = load_graph(pa), load_graph(pb)
    d = diff(a, b)
    figs = {c.id: c.figure for c in components(app.layout) if getattr(c, "id", None) in ("diff-a", "diff-b")}
    assert figs["diff-a"]["data"][1]["marker"]["color"] == node_colours(a, d)
    assert figs["diff-b"]["data"][1]["marker"]["color"] == node_colours(b, d)
    assert len(figs["diff-a"]["data"][1]["x"]) == 17 and len(figs["diff-b"]["data"][1]["x"]) == 5
    pre = [c.children for c in components(app.layout) if isinstance(c, dash.html.Pre)]
    assert pre == [format_diff(d, top=10)]
    assert main(["diff", str(pa), str(pb), "--view", "--json"]) == 0  # the JSON is printed, then served
    assert json.loads(capsys.readouterr().out.splitlines()[0])["a_prompt"] == "The capital of X is"
    assert len(served) == 2 and served[1][1]["port"] == 8051
    assert main(["diff", str(pa), str(pb), "--view", "--top", "2"]) == 0  # the page's summary follows --top
    pre = [c.children for c in components(served[2][0].layout) if isinstance(c, dash.html.Pre)]
    assert pre == [format_diff(d, top=2)] and format_diff(d, top=2) != format_diff(d, top=10)


@pytest.mark.parametrize(("a", "b", "colour"), [
    (1.0, 0.905, SAME),  # |Δ| / max = 0.095: grey
    (1.0, 0.895, "rgb(220,183,183)"),  # 0.105: red, shade int(200 - 160 * 0.105) = 183
    (0.895, 1.0, "rgb(183,200,183)"),  # up by 0.105: green
    (0.905, 1.0, SAME),
])  # fmt: skip
def test_diff_viewer_grey_within_ten_percent(a, b, colour):
    ga, gb = capital(10, 5, 20, " Paris", a), capital(11, 6, 21, " Berlin", b)
    d = diff(ga, gb)
    for g in (ga, gb):
        assert node_colours(g, d)[[n.id for n in g.nodes].index("F2.7@5")] == colour


def test_diff_and_common_refuse_other_transcoders(tmp_path, capsys):
    a, t = capital(10, 5, 20, " Paris"), capital(11, 6, 21, " Berlin")
    t.metadata.transcoders.content_hash = "t2"
    save_graph(tmp_path / "a.json", a)
    save_graph(tmp_path / "t.json", t)
    assert main(["diff", str(tmp_path / "a.json"), str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: a.json and t.json come from different transcoders (clt t vs clt t2)")
    assert err.count("\n") == 1
    assert main(["common", str(tmp_path)]) == 2
    assert "different transcoders" in capsys.readouterr().err
    assert not (tmp_path / "common.json").exists()


def test_common_reads_the_batch_index_and_writes_o(tmp_path, capsys):
    batch = tmp_path / "batch"
    batch.mkdir()
    for name, g in (("g1.json", capital(10, 5, 20, " Paris", 0.4)), ("g2.json", capital(11, 6, 21, " Berlin", 0.8)),
                    ("g3.json", capital(12, 9, 23, " Rome")), ("g4.json", capital(13, 9, 23, " Rome"))):  # fmt: skip
        save_graph(batch / name, g)
    # g3 failed (its file a leftover), g4 is not in the index: only g1 and g2 count
    write_index(batch / "index.json", BatchIndex(prompts_file="p.jsonl", entries=[
        Entry(line=1, file="g1.json", status="traced"), Entry(line=2, file="g2.json", status="skipped"),
        Entry(line=3, file="g3.json", status="failed", error="boom")]))  # fmt: skip
    assert main(["common", str(batch), "--min-share", "1"]) == 0
    assert "in at least 2 of 2 graphs" in capsys.readouterr().out
    nodes = {n.id: n for n in load_graph(batch / "common.json").nodes}
    assert set(nodes) == {"F2.7@-1", "EMB5@-4"}
    assert nodes["F2.7@-1"].influence == pytest.approx(0.6) and nodes["F2.7@-1"].label == "in 2/2 prompts"
    out = tmp_path / "elsewhere" / "c.json"
    out.parent.mkdir()
    assert main(["common", str(batch / "index.json"), "-o", str(out)]) == 0
    assert f"common circuit: {out}" in capsys.readouterr().out
    got = {n.id: n.label for n in load_graph(out).nodes}
    # min-share 0.5 of 2 graphs: present in one is enough; F1.9 (g3, g4 only) stays out
    assert got == {"F2.7@-1": "in 2/2 prompts", "EMB5@-4": "in 2/2 prompts", "F1.5@-2": "in 1/2 prompts",
                   "F1.6@-2": "in 1/2 prompts", "EMB10@-2": "in 1/2 prompts", "EMB11@-2": "in 1/2 prompts",
                   "LOGIT20": "in 1/2 prompts", "LOGIT21": "in 1/2 prompts"}  # fmt: skip
    assert main(["common", str(batch / "index.json"), "-o", str(tmp_path)]) == 2  # a folder is no graph file


def test_supernodes_threshold_on_the_cli(tmp_path, capsys):
    """Edges only (no transcoders match): similarity = Jaccard of neighbourhoods, by hand
    A {in EMB@4, in EMB@2, out LOGIT}, B {in EMB@4, out LOGIT}: 2/3; A-C {in EMB@2}: 1/3; B-C: 0."""
    nodes = [emb(4, 10, " X"), emb(2, 5, " of"), feat(1, 0, 4, 0.3), feat(1, 1, 4, 0.3), feat(2, 2, 4, 0.1),
             logit(5, 20, " Paris", 0.6)]  # fmt: skip
    edges = [("EMB@4", "F1.0@4", 1.0), ("EMB@2", "F1.0@4", 0.5), ("F1.0@4", "LOGIT20@5", 0.5),
             ("EMB@4", "F1.1@4", 1.0), ("F1.1@4", "LOGIT20@5", 0.4), ("EMB@2", "F2.2@4", 0.2)]  # fmt: skip
    path = save_graph(tmp_path / "g.json", graph(CAPITAL, nodes, edges))

    def groups(threshold: str) -> list[str]:
        assert main(["supernodes", str(path), "--threshold", threshold, "--dry-run"]) == 0
        return [x for x in capsys.readouterr().out.splitlines() if ": F" in x]

    assert groups("0.7") == []  # 2/3 < 0.7
    assert groups("0.66") == ["L1 ' X': F1.0@4, F1.1@4"]
    assert groups("0.16") == ["L1-2 ' X': F1.0@4, F1.1@4, F2.2@4"]  # {A, B} vs C: mean(1/3, 0) = 1/6 >= 0.16
    assert groups("0.17") == ["L1 ' X': F1.0@4, F1.1@4"]
    assert main(["supernodes", str(path), "--threshold", "0.66"]) == 0
    assert "from edges (no matching transcoders)\n" in capsys.readouterr().out
    assert [s.members for s in load_graph(path).view.supernodes] == [["F1.0@4", "F1.1@4"]]
    assert main(["supernodes", str(path), "--threshold", "1.5"]) == 2
    assert capsys.readouterr().err == "error: --threshold must be in [0, 1], got 1.5\n"


def bundled_labels() -> dict[tuple[int, int], str]:
    """(layer, feature) -> label, read from the bundled feature store with sqlite directly."""
    path = store_path(DEFAULT_TRANSCODERS)
    if not path.is_file():
        pytest.skip("no bundled feature store")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {(a, b): c for a, b, c in con.execute("SELECT layer, feature, label FROM features WHERE label != ''")}
    finally:
        con.close()


def test_supernodes_use_feature_store_labels(tmp_path, capsys):
    """Two features the bundled store labels alike group (similarity 1) though nothing else links them (no edges:
    Jaccard 0, so at most (0 + cos)/2 <= 0.5 < 0.9 without the store); a third, labelled otherwise, stays out."""
    labels = bundled_labels()
    by_label = defaultdict(list)
    for key, lab in sorted(labels.items()):
        by_label[lab].append(key)
    label, (fa, fb) = next((lab, keys[:2]) for lab, keys in sorted(by_label.items()) if len(keys) > 1)
    fc = next(k for k, lab in sorted(labels.items()) if lab != label)
    nodes = [feat(layer, f, 4, 0.3) for layer, f in (fa, fb, fc)] + [logit(5, 20, " Paris", 0.6)]
    g = graph(CAPITAL, nodes, [])
    g.metadata.n_layers = 4
    g.metadata.transcoders.content_hash = file_hash(sorted(Path(DEFAULT_TRANSCODERS).glob("*.safetensors")))
    path = save_graph(tmp_path / "g.json", g)
    ids = [n.id for n in nodes[:3]]
    assert main(["supernodes", str(path), "--threshold", "0.9", "--no-store"]) == 0
    assert capsys.readouterr().out.startswith("0 supernodes from decoder directions, edges\n")
    assert main(["supernodes", str(path), "--threshold", "0.9"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{label}: {ids[0]}, {ids[1]}\n1 supernodes from decoder directions, edges and store labels")
    view = load_graph(path).view
    assert [(s.label, s.members) for s in view.supernodes] == [(label, ids[:2])]
    assert view.pinned == ids[:2]
