"""Feature-store labels in graph files, and the top features of a graph for the trace summary.

1. label_graph: when a complete store for the graph's transcoders sits beside them (`features.sqlite`), every
   feature node without a label gets the store's automatic label, and the metadata records the store's path
   (`settings["feature_store"]`, which the viewer uses to find it). Labels a user edits in the viewer live in the
   view state and always win over these.
2. top_features: the n most influential feature nodes with their labels.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tracer.features.store import STORE_NAME, FeatureStoreError, open_store
from tracer.layout import NodeKind
from tracer.schema import GraphFile

log = logging.getLogger(__name__)


def label_graph(graph: GraphFile, transcoders_dir: Path) -> Path | None:
    """Step 1 (in place); the store's path, or None when there is no store that fits."""
    path = Path(transcoders_dir) / STORE_NAME
    if not path.is_file():
        return None
    try:
        db = open_store(path, graph.metadata.transcoders.content_hash)
    except FeatureStoreError as e:
        log.warning("feature labels skipped: %s", e)
        return None
    try:
        labels = db.labels()
    finally:
        db.close()
    for n in graph.nodes:
        if n.kind is NodeKind.FEATURE and n.feature is not None and not n.label:
            n.label = labels.get((n.layer, n.feature), "")
    graph.metadata.settings["feature_store"] = str(path.resolve())
    return path


def top_features(graph: GraphFile, n: int = 5) -> list[dict]:
    """Step 2: [{id, layer, feature, pos, token, influence, label}] by influence."""
    toks = graph.metadata.tokens
    feats = sorted((x for x in graph.nodes if x.kind is NodeKind.FEATURE), key=lambda x: -x.influence)[:n]
    return [{"id": x.id, "layer": x.layer, "feature": x.feature, "pos": x.pos,
             "token": toks[x.pos] if 0 <= x.pos < len(toks) else "", "influence": round(x.influence, 4),
             "label": x.label} for x in feats]  # fmt: skip


def format_top_features(items: list[dict]) -> list[str]:
    if not items:
        return []
    lines = ["top features (layer/index @ token, influence, label; details: tracer features show L/IDX):"]
    lines += [f"  {d['layer']}/{d['feature']} @ {d['token']!r}  {d['influence']:.3f}  {d['label'] or '(no label)'}"
              for d in items]  # fmt: skip
    return lines
