"""Feature store: what each transcoder feature reads and writes, built offline from a corpus (SQLite).

`open_store(path, transcoders_hash)` -> FeatureStoreDB with `describe(layer, feature)`, `search(text)`, `labels()`;
`store_path(transcoders_dir)` is where a store lives by default (beside the transcoders).
"""

from __future__ import annotations

from pathlib import Path

from tracer.features.store import STORE_NAME, FeatureInfo, FeatureStoreDB, FeatureStoreError, Hit, open_store


def store_path(transcoders_dir: str | Path) -> Path:
    return Path(transcoders_dir) / STORE_NAME


def describe(path: str | Path, layer: int, feature: int, transcoders_hash: str | None = None) -> FeatureInfo:
    """One feature of the store at `path` (opens and closes the store)."""
    db = open_store(path, transcoders_hash)
    try:
        return db.describe(layer, feature)
    finally:
        db.close()


def search(path: str | Path, text: str, limit: int = 20, transcoders_hash: str | None = None) -> list[Hit]:
    db = open_store(path, transcoders_hash)
    try:
        return db.search(text, limit)
    finally:
        db.close()


__all__ = ["STORE_NAME", "FeatureInfo", "FeatureStoreDB", "FeatureStoreError", "Hit", "describe", "open_store",
           "search", "store_path"]
