"""The viewer's FeatureStore (viewer/features.py) on a feature-store file.

1. open: `open_store` with the graph's transcoder hash (a store for other transcoders is refused).
2. describe: one row -> FeatureDescription (cached per feature; one indexed SQLite read + a zlib blob otherwise).
3. labels / search: from the store's label column and its in-memory search index (built in a background thread
   when the store opens).
4. discover: the store a graph's trace recorded (`settings["feature_store"]`), else the bundled transcoders' own
   store when the graph's transcoder hash is theirs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from tracer.features.store import FeatureStoreDB, FeatureStoreError, open_store
from tracer.schema import Metadata
from viewer.features import Example, FeatureDescription, FeatureHit

CACHE_SIZE = 512


class ViewerStore:
    def __init__(self, db: FeatureStoreDB) -> None:
        self.db = db
        self._lock = threading.Lock()  # one SQLite connection shared by the server's threads
        self._cache: dict[tuple[int, int], FeatureDescription | None] = {}
        self._labels: dict[tuple[int, int], str] | None = None
        threading.Thread(target=self._warm, daemon=True).start()

    def _warm(self) -> None:
        """Build the search index on a second connection in the background (seconds on a big store), so the
        first search does not wait and clicks meanwhile are not blocked."""
        try:
            other = open_store(self.db.path)
            docs = other._index()
            other.close()
        except FeatureStoreError:
            return
        with self._lock:
            if self.db._docs is None:
                self.db._docs = docs

    @property
    def transcoders_hash(self) -> str:
        return self.db.transcoders_hash

    @classmethod
    def open(cls, path: str | Path, transcoders_hash: str | None = None) -> ViewerStore:
        return cls(open_store(path, transcoders_hash))

    def describe(self, layer: int, feature: int) -> FeatureDescription | None:
        key = (layer, feature)
        if key not in self._cache:
            with self._lock:
                try:
                    info = self.db.describe(layer, feature)
                except FeatureStoreError:
                    return None
            if len(self._cache) >= CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = FeatureDescription(
                top_tokens=info.top_logits, bottom_tokens=info.bottom_logits,
                examples=[Example(c.tokens, c.acts, c.band) for c in info.contexts],
                histogram=info.histogram if info.n_fires else None, frequency=info.frequency, label=info.label,
                label_rule=info.label_rule, label_confidence=info.label_confidence, input_tokens=info.top_inputs,
                act_max=info.act_max, mean=info.mean,
            )  # fmt: skip
        return self._cache[key]

    def labels(self, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], str]:
        if self._labels is None:
            with self._lock:
                self._labels = self.db.labels()
        return {k: self._labels[k] for k in keys if k in self._labels}

    def search(self, text: str, limit: int = 30) -> list[FeatureHit]:
        with self._lock:
            return [FeatureHit(*h) for h in self.db.search(text, limit)]


@cache
def _bundled_hash() -> str | None:
    from tracer.features.cli import transcoders_hash
    from transcoders import DEFAULT_TRANSCODERS

    try:
        return transcoders_hash(Path(DEFAULT_TRANSCODERS))
    except Exception:  # no bundled transcoders installed: nothing to match
        return None


def discover(metadata: Metadata) -> Path | None:
    """Step 4: the path of the store for a graph, or None."""
    from tracer.features import store_path
    from transcoders import DEFAULT_TRANSCODERS

    recorded = metadata.settings.get("feature_store")
    if isinstance(recorded, str) and Path(recorded).is_file():
        return Path(recorded)
    bundled = store_path(DEFAULT_TRANSCODERS)
    if bundled.is_file() and metadata.transcoders.content_hash == _bundled_hash():
        return bundled
    return None


def bundled_store() -> ViewerStore | None:
    """The bundled transcoders' own store, when it exists and fits them (else None)."""
    from tracer.features import store_path
    from transcoders import DEFAULT_TRANSCODERS

    path = store_path(DEFAULT_TRANSCODERS)
    h = _bundled_hash()
    if not path.is_file() or h is None:
        return None
    try:
        return ViewerStore.open(path, h)
    except FeatureStoreError:
        return None
