"""What the viewer knows about a feature beyond the graph file: the plug-in point for a feature store.

1. `FeatureStore` (a Protocol): `describe(layer, feature)` for the detail panel, `labels(keys)` for the main graph's
   node names, `search(text, limit)` for the search box. The implementation is `tracer.features.ViewerStore`
   (an SQLite store built by `tracer features build`); tests may pass any object with these methods.
2. `find_store(metadata, explicit)`: the store for a graph: `tracer view --features STORE`, else the one the trace
   recorded (`settings["feature_store"]`), else the store beside the bundled transcoders when the graph's
   transcoder hash is theirs; None when there is none (the panel then says so). `features_for` does the same for
   what a viewer serves (a file or a folder).
3. Without a store the panel shows what the graph itself knows: the feature's direct effects on the output logits
   (its edges into logit nodes), see `logit_effects`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from tracer.layout import NodeKind
from tracer.schema import Metadata
from viewer.model import GraphView

if TYPE_CHECKING:
    from viewer.data import GraphStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One context: its tokens and the feature's activation on each; `group` names its quantile band."""

    tokens: list[str]
    activations: list[float]
    group: str = "top"


@dataclass(frozen=True)
class FeatureDescription:
    top_tokens: list[tuple[str, float]] = field(default_factory=list)  # logit effects of its decoders, largest
    bottom_tokens: list[tuple[str, float]] = field(default_factory=list)  # most negative logit effects
    examples: list[Example] = field(default_factory=list)  # top-activating contexts first, then lower quantiles
    histogram: tuple[list[float], list[int]] | None = None  # activation bin edges [n+1] and counts [n]
    frequency: float | None = None  # share of tokens on which the feature fires
    label: str = ""  # automatic label ('' when no rule was confident)
    label_rule: str = ""  # which rule produced the label
    label_confidence: float = 0.0
    input_tokens: list[tuple[str, float]] = field(default_factory=list)  # tokens whose embeddings excite it most
    act_max: float | None = None
    mean: float | None = None  # mean non-zero activation


class FeatureHit(NamedTuple):
    layer: int
    feature: int
    label: str
    score: float  # higher = better match


class FeatureStore(Protocol):
    def describe(self, layer: int, feature: int) -> FeatureDescription | None:
        """Everything known about one feature, or None when the store does not have it."""
        ...

    def labels(self, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], str]:
        """(layer, feature) -> automatic label, for the given features that have a non-empty one."""
        ...

    def search(self, text: str, limit: int = 30) -> list[FeatureHit]:
        """Features ranked by how well their label, top tokens and context text match `text`."""
        ...


def find_store(metadata: Metadata, explicit: str | Path | None = None) -> FeatureStore | None:
    """The feature store for a graph (module docstring, step 2). Errors in an explicit store propagate
    (TracerError); an automatically found store that does not open or fit is skipped."""
    from tracer.errors import TracerError
    from tracer.features.viewer_store import ViewerStore, discover

    if explicit is not None:
        return ViewerStore.open(explicit, metadata.transcoders.content_hash)
    path = discover(metadata)
    try:
        return ViewerStore.open(path, metadata.transcoders.content_hash) if path is not None else None
    except TracerError as e:
        log.warning("feature store %s skipped: %s", path, e)
        return None


def features_for(graphs: GraphStore, explicit: str | Path | None = None) -> FeatureStore | None:
    """The store for what the viewer serves: one graph file -> `find_store` on its metadata; a folder -> the
    explicit store (unchecked: graphs may differ), else the bundled transcoders' store when it exists."""
    from tracer.features.viewer_store import bundled_store

    if graphs.single is not None:
        return find_store(graphs.load(None).view.graph.metadata, explicit)
    if explicit is not None:
        from tracer.features.viewer_store import ViewerStore

        return ViewerStore.open(explicit)
    return bundled_store()


def fits(store: FeatureStore | None, metadata: Metadata) -> FeatureStore | None:
    """The store when it was built for the graph's transcoders (or cannot tell), else None: in folder mode one store
    serves graphs that may come from different transcoders."""
    h = getattr(store, "transcoders_hash", None)
    return store if store is not None and (h is None or h == metadata.transcoders.content_hash) else None


def logit_effects(view: GraphView, node_id: str, limit: int = 8) -> list[tuple[str, float]]:
    """The node's direct edges into output logits in this graph: (token, weight), largest |weight| first."""
    i = view.row.get(node_id)
    if i is None:
        return []
    out = [e for e in view.outgoing(i) if view.kind[view.tgt[e]] == NodeKind.LOGIT.code]
    out.sort(key=lambda e: -abs(view.weight[e]))
    return [(view.graph.nodes[int(view.tgt[e])].token or "", float(view.weight[e])) for e in out[:limit]]
