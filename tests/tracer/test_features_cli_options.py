"""The feature-store CLI options that change what comes out: `build --corpus FILE.jsonl`, `show --contexts
--samples`, `search --limit`, and `tracer view GRAPH --features STORE` (to the served app, never served)."""

from __future__ import annotations

import json
import socket
import sqlite3
from urllib.parse import urlencode

import pytest

from tests.tracer import features_subject as subj
from tests.viewer.test_callbacks import texts
from tracer.cli import main
from tracer.features import open_store
from tracer.features.corpus import corpus_stream
from viewer.handlers import Env, panels

BUILD = ["features", "build", "--tokens", "1500", "--seq-len", "32", "--batch-seqs", "8", "--json"]
RICH = "0/1"  # a feature with contexts in every band (3 each): what --contexts and --samples cut


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The subject's store from corpus.txt (beside the transcoders) and from the same lines as JSONL (-s)."""
    root = tmp_path_factory.mktemp("features_options")
    model, clt, corpus = subj.save_subject(root)
    lines = corpus.read_text().splitlines()
    jsonl = root / "corpus.jsonl"  # objects with a "text" field and bare strings, a blank line in between
    jsonl.write_text("\n".join(json.dumps({"text": t, "id": k} if k % 2 else t) + ("\n" if k == 5 else "")
                               for k, t in enumerate(lines)) + "\n")  # fmt: skip
    common = ["--model", model, "--transcoders", clt]
    assert main([*BUILD, *map(str, common), "--corpus", str(corpus)]) == 0
    assert main([*BUILD, *map(str, common), "--corpus", str(jsonl), "-s", str(root / "jsonl.sqlite")]) == 0
    return root, model, clt


def rows(path) -> list:
    with sqlite3.connect(path) as con:
        return con.execute("SELECT * FROM features ORDER BY layer, feature").fetchall()


def test_jsonl_corpus_streams_the_same_documents(built):
    root, _, clt = built
    assert rows(root / "jsonl.sqlite") == rows(clt / "features.sqlite")  # the same tokens, so the same store
    assert open_store(root / "jsonl.sqlite").provenance["corpus"] == "corpus.jsonl"
    # documents are separated by the separator token (the model's EOS in a build) and cut at max_tokens
    doc = root / "docs.jsonl"
    doc.write_text('{"text": "the old France"}\n\n"Paris is big"\n{"text": "a map", "x": 1}\n')
    ids = lambda words: [subj.VOCAB.index(w) for w in words.split()]  # noqa: E731
    got = corpus_stream(subj.tokenizer(), doc, 100, 1).tolist()
    assert got == ids("the old France") + [1] + ids("Paris is big") + [1] + ids("a map") + [1]
    assert corpus_stream(subj.tokenizer(), doc, 5, None).tolist() == ids("the old France Paris is")


def sections(out: str) -> dict[str, list[str]]:
    """The printed dashboard's context lines under each heading ('top contexts', 'sampled, quantile ...')."""
    got: dict[str, list[str]] = {}
    head = None
    for line in out.splitlines():
        if line in ("top contexts:",) or line.startswith("sampled, "):
            head = line[:-1]
            got[head] = []
        elif head is not None and line.startswith("  "):
            got[head].append(line)
    return got


def shown(context: dict) -> str:
    text = "".join(f"[{t}]" if a > 0 else t for t, a in zip(context["tokens"], context["acts"], strict=True))
    return f"  {context['acts'][context['peak']]:6.3f}  {text}"


@pytest.mark.parametrize(("contexts", "samples"), [(6, 3), (2, 1), (0, 2), (4, 0), (99, 99)])
def test_show_contexts_and_samples(built, capsys, contexts, samples):
    """--contexts N prints the first N top contexts, --samples N the first N of each lower band (the defaults are 6
    and 3); a band cut to 0 loses its heading; --json always carries them all."""
    _, _, clt = built
    rc, out, _ = run(capsys, "features", "show", RICH, "--transcoders", clt, "--json")
    ctx = json.loads(out)["contexts"]
    bands = {c["band"] for c in ctx}
    assert rc == 0 and len(bands) == 4 and all(sum(c["band"] == b for c in ctx) >= 3 for b in bands - {"top"})
    extra = [] if (contexts, samples) == (6, 3) else ["--contexts", contexts, "--samples", samples]
    rc, out, _ = run(capsys, "features", "show", RICH, "--transcoders", clt, *extra)
    want: dict[str, list[str]] = {}
    for c in ctx:
        head = "top contexts" if c["band"] == "top" else f"sampled, {c['band']}"
        if len(want.setdefault(head, [])) < (contexts if c["band"] == "top" else samples):
            want[head].append(shown(c))
    assert rc == 0 and sections(out) == {h: v for h, v in want.items() if v}
    assert sum(map(len, want.values())) == min(contexts, 10) + sum(min(samples, 3) for _ in bands - {"top"})


def test_search_limit(built, capsys):
    """--limit N keeps the first N of the full ranking, in order (text and JSON); the default is 20."""
    _, _, clt = built
    rc, out, _ = run(capsys, "features", "search", "the", "--transcoders", clt, "--json", "--limit", 100)
    full = [(h["layer"], h["feature"]) for h in json.loads(out)]
    assert rc == 0 and len(full) == 16  # every feature has " the" somewhere in its top contexts
    for limit in (1, 3, 16):
        rc, out, _ = run(capsys, "features", "search", "the", "--transcoders", clt, "--json", "--limit", limit)
        assert rc == 0 and [(h["layer"], h["feature"]) for h in json.loads(out)] == full[:limit]
        rc, out, _ = run(capsys, "features", "search", "the", "--transcoders", clt, "--limit", limit)
        listed = [tuple(map(int, line.split()[0].split("/"))) for line in out.splitlines()]
        assert listed == full[:limit]
    rc, out, _ = run(capsys, "features", "search", "paris", "--transcoders", clt, "--json", "--limit", 0)
    assert rc == 0 and json.loads(out) == []




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_view_features_option(built, served, capsys, tmp_path):
    """`tracer view GRAPH --features STORE` serves STORE's descriptions (here built with --top-k 3), not the store
    the trace recorded (top-k 10); a store for other transcoders or a missing one is a one-line error."""
    root, model, clt = built
    graph = tmp_path / "g.json"
    rc, _, _ = run(capsys, "trace", "the old city of France", "--model", model, "--transcoders", clt, "-o", graph,
                   "--node-threshold", "1.0")  # fmt: skip
    assert rc == 0
    small = tmp_path / "k3.sqlite"
    assert main([*BUILD, "--model", str(model), "--transcoders", str(clt), "--corpus", str(root / "corpus.txt"),
                 "--top-k", "3", "-s", str(small)]) == 0  # fmt: skip
    capsys.readouterr()

    def detail(*extra) -> int:
        """The planted feature's top contexts in the served store (its detail panel shows them all)."""
        rc, out, err = run(capsys, "view", graph, "--port", free_port(), *extra)
        assert rc == 0 and err == "" and "viewer: http://127.0.0.1:" in out
        env: Env = served.pop("env")
        st, loaded = env.open("?" + urlencode({"clickedId": "F0.3@5"}))
        fs = env.features_for(loaded)
        desc = fs.describe(*subj.PLANTED) if fs is not None else None
        assert desc is not None
        shown = texts(panels(env, st, loaded)[0])
        assert shown[shown.index("Top activations") + 1 :] == [t for e in desc.examples for t in e.tokens]
        return len(desc.examples)

    assert (detail(), detail("--features", small)) == (10, 3)  # the planted feature has no lower-band examples
    other = tmp_path / "other.sqlite"
    other.write_bytes(small.read_bytes())
    with sqlite3.connect(other) as con:
        prov = json.loads(con.execute("SELECT value FROM meta WHERE key = 'provenance'").fetchone()[0])
        prov["transcoders"]["content_hash"] = "another"
        con.execute("UPDATE meta SET value = ? WHERE key = 'provenance'", (json.dumps(prov),))
    for bad, msg in ((other, "other transcoders"), (tmp_path / "nope.sqlite", "does not exist")):
        rc, out, err = run(capsys, "view", graph, "--port", free_port(), "--features", bad)
        assert rc == 2 and out == "" and err.startswith("error: ") and msg in err and err.count("\n") == 1
