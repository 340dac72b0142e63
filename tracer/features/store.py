"""The feature store: one SQLite file (stdlib sqlite3, rollback journal, WAL off) describing every feature of one
transcoder set, and the read API that the CLI and the viewer share.

Schema (FORMAT):
- `meta(key, value)`: `format`, `complete` ('1' only after the final transaction of a build), `provenance`
  (JSON: model/transcoder names and content hashes, corpus, token count, build settings, label rules).
- `vocab(id, token)`: readable token strings, so reading needs no tokenizer.
- `features(layer, feature, ...)`, primary key (layer, feature): frequency, mean/max, quantiles, histogram
  counts (equal bins over [0, max]), logit-lens top/bottom tokens, input tokens, label (+ rule, confidence),
  peak tokens, examples (a zlib blob of token ids [n, W] int32, activations [n, W] float16, peak index [n] int16
  and band [n] uint8).
- `checkpoint(id = 0, state)`: a build's resumable state (only while incomplete).

Reading: 1. open: a missing, corrupt, foreign-format or incomplete file, or one built for other transcoders, is a
FeatureStoreError (one line); 2. describe(layer, feature) -> FeatureInfo; 3. search(text) ranks features by label,
top tokens and context text (an in-memory index loaded once); 4. labels() for every labelled feature.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tracer.errors import TracerError

FORMAT = "clt-tracer feature store v1"
STORE_NAME = "features.sqlite"  # default file name, beside the transcoders
BANDS = ("top", "quantile 50-90%", "quantile 25-50%", "quantile 0-25%")  # example groups, strongest first

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vocab (id INTEGER PRIMARY KEY, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY CHECK (id = 0), state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS features (
    layer INTEGER NOT NULL, feature INTEGER NOT NULL,
    n_fires INTEGER NOT NULL, frequency REAL NOT NULL, mean REAL NOT NULL, act_max REAL NOT NULL,
    quantiles TEXT NOT NULL, histogram TEXT NOT NULL,
    top_logits TEXT NOT NULL, bottom_logits TEXT NOT NULL, top_inputs TEXT NOT NULL,
    label TEXT NOT NULL, label_rule TEXT NOT NULL, label_confidence REAL NOT NULL,
    peak_text TEXT NOT NULL, examples BLOB,
    PRIMARY KEY (layer, feature));
"""


class FeatureStoreError(TracerError):
    """A feature store is missing, corrupt, incomplete, or built for other transcoders; or a feature is unknown."""


# ---- examples blob ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleRow:
    tokens: list[int]
    acts: list[float]
    peak: int  # index of the peak within the window
    band: int  # index into BANDS


def pack_examples(tokens: np.ndarray, acts: np.ndarray, peak: np.ndarray, band: np.ndarray) -> bytes | None:
    """tokens [n, W] int, acts [n, W] float, peak [n], band [n] -> zlib blob (None when n = 0)."""
    n = len(tokens)
    if n == 0:
        return None
    head = np.array([n, tokens.shape[1]], dtype=np.int32).tobytes()
    body = (tokens.astype(np.int32).tobytes() + acts.astype(np.float16).tobytes() + peak.astype(np.int16).tobytes()
            + band.astype(np.uint8).tobytes())  # fmt: skip
    return zlib.compress(head + body, 9)


def unpack_examples(blob: bytes | None) -> list[ExampleRow]:
    if not blob:
        return []
    raw = zlib.decompress(blob)
    n, w = np.frombuffer(raw[:8], dtype=np.int32).tolist()
    o = 8
    tok = np.frombuffer(raw, np.int32, n * w, o).reshape(n, w)
    o += 4 * n * w
    act = np.frombuffer(raw, np.float16, n * w, o).reshape(n, w).astype(np.float32)
    o += 2 * n * w
    peak = np.frombuffer(raw, np.int16, n, o)
    band = np.frombuffer(raw, np.uint8, n, o + 2 * n)
    return [ExampleRow(tok[i].tolist(), act[i].tolist(), int(peak[i]), int(band[i])) for i in range(n)]


def _top_band(blob: bytes | None) -> np.ndarray:
    """Token ids [n, W] of the examples of band 0 (top activations) in a blob, without building rows."""
    if not blob:
        return np.zeros((0, 0), dtype=np.int32)
    raw = zlib.decompress(blob)
    n, w = np.frombuffer(raw[:8], dtype=np.int32).tolist()
    tok = np.frombuffer(raw, np.int32, n * w, 8).reshape(n, w)
    band = np.frombuffer(raw, np.uint8, n, 8 + 4 * n * w + 2 * n * w + 2 * n)
    return tok[band == 0]


# ---- reading ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    tokens: list[str]
    acts: list[float]
    peak: int
    band: str

    @property
    def peak_act(self) -> float:
        return self.acts[self.peak]


@dataclass(frozen=True)
class FeatureInfo:
    """Everything the store knows about one feature."""

    layer: int
    feature: int
    n_fires: int
    frequency: float
    mean: float
    act_max: float
    quantiles: list[tuple[float, float]]  # (q, value) of the non-zero activations
    histogram: tuple[list[float], list[int]]  # bin edges [n+1], counts [n]
    top_logits: list[tuple[str, float]]
    bottom_logits: list[tuple[str, float]]
    top_inputs: list[tuple[str, float]]
    label: str
    label_rule: str
    label_confidence: float
    contexts: list[Context] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["contexts"] = [c.__dict__ for c in self.contexts]
        d["histogram"] = {"edges": self.histogram[0], "counts": self.histogram[1]}
        return d


def _context(e: ExampleRow, tok) -> Context:
    """Drop the padding (-1: outside the sequence or BOS) and shift the peak index accordingly."""
    keep = [i for i, t in enumerate(e.tokens) if t >= 0]
    return Context([tok(e.tokens[i]) for i in keep], [e.acts[i] for i in keep], keep.index(e.peak)
                   if e.peak in keep else 0, BANDS[e.band])  # fmt: skip


class Hit(NamedTuple):
    layer: int
    feature: int
    label: str
    score: float


class _Doc(NamedTuple):
    layer: int
    feature: int
    label: str  # casefolded
    logits: tuple[str, ...]  # top logit-lens tokens, best first, stripped and casefolded
    inputs: tuple[str, ...]  # top input tokens, the same
    peaks: tuple[str, ...]  # the token at the peak of each top context, the same
    contexts: tuple[str, ...]  # casefolded text of each top context


def _ranked(q: str, items: tuple[str, ...], weight: float) -> float:
    """weight·(1 - rank/n) for the best-ranked item equal to q (half for an item containing q), else 0."""
    for r, t in enumerate(items):
        if t == q or q in t:
            return weight * (1 - r / len(items)) * (1.0 if t == q else 0.5)
    return 0.0


def _share(q: str, items: tuple[str, ...], weight: float) -> float:
    if not items:
        return 0.0
    return weight * sum(1.0 if t == q else 0.5 if q in t else 0.0 for t in items) / len(items)


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=DELETE")
    return con


class FeatureStoreDB:
    """A complete store opened for reading (see `open_store`)."""

    def __init__(self, path: Path, con: sqlite3.Connection, provenance: dict[str, Any]) -> None:
        self.path, self.con, self.provenance = path, con, provenance
        self._vocab: list[str] | None = None
        self._docs: list[_Doc] | None = None
        self._labels: dict[tuple[int, int], str] | None = None

    @property
    def n_layers(self) -> int:
        return int(self.provenance["n_layers"])

    @property
    def n_features(self) -> int:
        return int(self.provenance["n_features"])

    @property
    def transcoders_hash(self) -> str:
        return str(self.provenance["transcoders"]["content_hash"])

    def vocab(self) -> list[str]:
        if self._vocab is None:
            self._vocab = [t for (t,) in self.con.execute("SELECT token FROM vocab ORDER BY id")]
        return self._vocab

    def _tok(self, i: int) -> str:
        v = self.vocab()
        return v[i] if 0 <= i < len(v) else f"<{i}>"

    def check_feature(self, layer: int, feature: int) -> None:
        if not (0 <= layer < self.n_layers and 0 <= feature < self.n_features):
            raise FeatureStoreError(f"unknown feature {layer}/{feature}: the store has layers 0-{self.n_layers - 1} "
                                    f"and features 0-{self.n_features - 1}")  # fmt: skip

    def describe(self, layer: int, feature: int) -> FeatureInfo:
        self.check_feature(layer, feature)
        row = self.con.execute(
            "SELECT n_fires, frequency, mean, act_max, quantiles, histogram, top_logits, bottom_logits, top_inputs, "
            "label, label_rule, label_confidence, examples FROM features WHERE layer=? AND feature=?", (layer, feature)
        ).fetchone()  # fmt: skip
        if row is None:
            raise FeatureStoreError(f"feature {layer}/{feature} is missing from {self.path} (corrupt store)")
        try:
            counts = json.loads(row[5])
            edges = np.linspace(0.0, float(row[3]), len(counts) + 1).round(5).tolist()
            toks = lambda s: [(self._tok(int(i)), float(v)) for i, v in json.loads(s)]  # noqa: E731
            ctx = [_context(e, self._tok) for e in unpack_examples(row[12])]
            return FeatureInfo(
                layer=layer, feature=feature, n_fires=int(row[0]), frequency=float(row[1]), mean=float(row[2]),
                act_max=float(row[3]), quantiles=[(float(q), float(v)) for q, v in json.loads(row[4])],
                histogram=(edges, counts), top_logits=toks(row[6]), bottom_logits=toks(row[7]),
                top_inputs=toks(row[8]), label=row[9], label_rule=row[10], label_confidence=float(row[11]),
                contexts=ctx,
            )  # fmt: skip
        except (ValueError, KeyError, TypeError, zlib.error, IndexError) as e:
            raise FeatureStoreError(f"feature {layer}/{feature} in {self.path} is corrupt: {e}") from None

    def _index(self) -> list[_Doc]:
        """The search index, built once: label, top tokens (logits, inputs, peaks) and the top contexts' text."""
        if self._docs is None:
            rows = self.con.execute("SELECT layer, feature, label, top_logits, top_inputs, examples "
                                    "FROM features WHERE n_fires > 0")  # fmt: skip
            vocab = [t.casefold() for t in self.vocab()]
            norm = [t.strip() for t in vocab]
            V = len(vocab)
            docs = []
            for layer, feat, label, tl, ti, blob in rows:
                top = _top_band(blob)  # [n, W] token ids of the top contexts
                peaks = [norm[i] for i in top[:, int(self.provenance["build"]["settings"]["before"])].tolist()
                         if 0 <= i < V]  # fmt: skip
                ctx = tuple("".join(vocab[i] for i in r if 0 <= i < V) for r in top.tolist())
                docs.append(_Doc(layer, feat, label.casefold(), tuple(norm[i] for i, _ in json.loads(tl) if i < V),
                                 tuple(norm[i] for i, _ in json.loads(ti) if i < V), tuple(peaks), ctx))  # fmt: skip
            self._docs = docs
        return self._docs

    def search(self, text: str, limit: int = 20) -> list[Hit]:
        """Features ranked by the sum of: the query in the label (3); the best rank of a top output token equal to
        it (≤ 2) and of a top input token (≤ 1.5); the share of top contexts peaking on it (≤ 2) and containing it
        (≤ 1); partial matches (the query inside a token) count half. Ties by layer and feature."""
        q = text.strip().casefold()
        if not q:
            return []
        hits = []
        for d in self._index():
            s = 3.0 * (q in d.label) + _ranked(q, d.logits, 2.0) + _ranked(q, d.inputs, 1.5)
            s += _share(q, d.peaks, 2.0) + sum(q in c for c in d.contexts) / max(1, len(d.contexts))
            if s > 0:
                hits.append(Hit(d.layer, d.feature, self._label_of(d), round(s, 4)))
        hits.sort(key=lambda h: (-h.score, h.layer, h.feature))
        return hits[:limit]

    def _label_of(self, d: _Doc) -> str:
        return self.labels().get((d.layer, d.feature), "")

    def labels(self) -> dict[tuple[int, int], str]:
        """(layer, feature) -> label, for every feature with a non-empty label (read once)."""
        if self._labels is None:
            rows = self.con.execute("SELECT layer, feature, label FROM features WHERE label != ''")
            self._labels = {(int(a), int(b)): c for a, b, c in rows}
        return self._labels

    def close(self) -> None:
        self.con.close()


def read_meta(con: sqlite3.Connection, path: Path) -> dict[str, str]:
    try:
        return dict(con.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as e:
        raise FeatureStoreError(f"{path} is not a feature store ({e})") from None


def open_store(path: str | Path, transcoders_hash: str | None = None) -> FeatureStoreDB:
    """Open a complete store for reading; `transcoders_hash` (content hash of the transcoder files) must match."""
    path = Path(path)
    if not path.is_file():
        raise FeatureStoreError(f"feature store {path} does not exist (build one with `tracer features build`)")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as e:
        raise FeatureStoreError(f"cannot open feature store {path}: {e}") from None
    meta = read_meta(con, path)
    if meta.get("format") != FORMAT:
        raise FeatureStoreError(f"{path} is not a feature store of this version (format {meta.get('format')!r})")
    if meta.get("complete") != "1":
        raise FeatureStoreError(f"feature store {path} is incomplete (its build was interrupted); "
                                "run the same `tracer features build` again to resume it")  # fmt: skip
    try:
        prov = json.loads(meta["provenance"])
        tc_hash = prov["transcoders"]["content_hash"]
    except (KeyError, ValueError, TypeError):
        raise FeatureStoreError(f"feature store {path} has corrupt provenance") from None
    if transcoders_hash is not None and tc_hash != transcoders_hash:
        raise FeatureStoreError(f"feature store {path} was built for other transcoders (content hash {tc_hash}, "
                                f"these are {transcoders_hash}); rebuild it with `tracer features build`")  # fmt: skip
    return FeatureStoreDB(path, con, prov)


def parse_feature_id(text: str) -> tuple[int, int]:
    """`L/IDX` (or `L.IDX`, `F{L}.{IDX}`) -> (layer, feature)."""
    s = text.strip().removeprefix("F").split("@")[0]
    for sep in ("/", "."):
        if sep in s:
            a, _, b = s.partition(sep)
            if a.strip().isdigit() and b.strip().isdigit():
                return int(a), int(b)
    raise FeatureStoreError(f"bad feature id {text!r}: expected LAYER/INDEX, e.g. 1/42")
