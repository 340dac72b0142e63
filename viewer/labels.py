"""Which nodes of the main graph carry a label, and where each label goes so that none overlap.

1. names: a node's label text — the edited label (URL clerps), else the graph file's, else the feature store's
   automatic label (FeatureStore.labels), else none; logits show their token.
2. candidates, in priority order: the logits (most probable first); then, among the TOP_CONSIDERED most
   influential features, those with a label by influence (at most MAX_FEATURE_LABELS); then unlabelled ones named
   by id (`F3.123`) until MIN_FEATURE_LABELS are shown.
3. placement (greedy, in priority order): at the nominal plot size PLOT_PX, a label's box (width from its length)
   goes right / left / above / below its node (logits: above / below / left / right), the first that overlaps no
   placed label and no labelled node's marker; a label with no free side is left out (hover still names it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from tracer.layout import NodeKind

if TYPE_CHECKING:
    from viewer.features import FeatureStore
    from viewer.model import GraphView

PLOT_PX = (1000.0, 480.0)  # plot area (px) of the main graph at its default size; labels are placed for it
CHAR_PX, LINE_PX, PAD = 6.4, 14.0, 3.0  # 11 px sans-serif: mean character width, line height, padding
MAX_CHARS = 30  # longer labels are shortened with "…" (the full text is in the hover and the detail panel)
MAX_FEATURE_LABELS = 40
MIN_FEATURE_LABELS = 12
TOP_CONSIDERED = 200
SIDES = ("middle right", "middle left", "top center", "bottom center")  # plotly textposition values
LOGIT_SIDES = ("top center", "bottom center", "middle left", "middle right")


class Placement(NamedTuple):
    rows: tuple[int, ...]  # node rows that carry a label
    text: tuple[str, ...]  # plain text (the sink escapes it)
    position: tuple[str, ...]  # plotly textposition of each


def short(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def label_px(text: str) -> float:
    return len(short(text)) * CHAR_PX + 2 * PAD


# 1. names


def store_labels(view: GraphView, store: FeatureStore | None, limit: int = TOP_CONSIDERED) -> dict[str, str]:
    """Node id -> the feature store's label, for the `limit` most influential features (empty without a store)."""
    if store is None:
        return {}
    feats = [n for n in view.graph.nodes if n.kind is NodeKind.FEATURE and n.feature is not None]
    feats.sort(key=lambda n: -n.influence)
    by_key = {(n.layer, int(n.feature or 0)): n.id for n in feats[:limit]}
    got = store.labels(list(by_key))
    return {by_key[k]: v for k, v in got.items() if k in by_key and v}


def node_label(view: GraphView, i: int, labels: Mapping[str, str], auto: Mapping[str, str]) -> str:
    """The label text of row i ('' when it has none)."""
    n = view.graph.nodes[i]
    return labels.get(n.id) or n.label or auto.get(n.id, "")


# 2. candidates


def candidates(view: GraphView, labels: Mapping[str, str], auto: Mapping[str, str]) -> list[tuple[int, str]]:
    """(row, text) in placement priority."""
    nodes = view.graph.nodes
    logits = sorted(np.flatnonzero(view.kind == NodeKind.LOGIT.code).tolist(),
                    key=lambda i: -(nodes[i].probability or 0.0))  # fmt: skip
    out = [(i, labels.get(nodes[i].id) or nodes[i].token or "") for i in logits]
    feats = sorted(np.flatnonzero(view.kind == NodeKind.FEATURE.code).tolist(), key=lambda i: -nodes[i].influence)
    top = feats[:TOP_CONSIDERED]
    named = [(i, t) for i in top if (t := node_label(view, i, labels, auto))][:MAX_FEATURE_LABELS]
    have = {i for i, _ in named}
    fill = [(i, f"F{nodes[i].layer}.{nodes[i].feature}") for i in top if i not in have]
    return out + named + fill[: max(0, MIN_FEATURE_LABELS - len(named))]


# 3. placement


def _box(side: str, x: float, y: float, r: float, w: float) -> tuple[float, float, float, float]:
    h = LINE_PX
    return {"middle right": (x + r, y - h / 2, x + r + w, y + h / 2),
            "middle left": (x - r - w, y - h / 2, x - r, y + h / 2),
            "top center": (x - w / 2, y - r - h, x + w / 2, y - r),
            "bottom center": (x - w / 2, y + r, x + w / 2, y + r + h)}[side]  # fmt: skip


def place(view: GraphView, px: np.ndarray, py: np.ndarray, sizes: np.ndarray,
          cands: list[tuple[int, str]]) -> Placement:  # fmt: skip
    """Greedy collision-free placement (module docstring, step 3). px, py: [n_nodes] pixel positions (y down)."""
    rows = np.array([i for i, _ in cands], dtype=np.int64)
    half = sizes[rows] / 2 if len(rows) else np.zeros(0)
    markers = np.column_stack([px[rows] - half, py[rows] - half, px[rows] + half, py[rows] + half])
    boxes = np.zeros((0, 4))
    out: list[tuple[int, str, str]] = []
    for k, (i, text) in enumerate(cands):
        if not text:
            continue
        w, r = label_px(text), float(sizes[i]) / 2 + 1
        sides = LOGIT_SIDES if view.kind[i] == NodeKind.LOGIT.code else SIDES
        others = np.delete(markers, k, axis=0)
        for side in sides:
            b = np.array(_box(side, float(px[i]), float(py[i]), r, w))
            blockers = np.vstack([boxes, others])
            hit = (b[0] < blockers[:, 2]) & (blockers[:, 0] < b[2]) & (b[1] < blockers[:, 3]) & (blockers[:, 1] < b[3])
            if not hit.any():
                boxes = np.vstack([boxes, b])
                out.append((i, short(text), side))
                break
    return Placement(tuple(i for i, _, _ in out), tuple(t for _, t, _ in out), tuple(s for _, _, s in out))
