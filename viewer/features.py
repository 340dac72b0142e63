"""What the detail panel knows about a feature beyond the graph file: the plug-in point for a feature store.

A feature store (built by a later issue, beside the transcoders) implements `FeatureStore.describe(layer, feature)`
and is handed to `create_app(..., feature_store=...)`. Without one, the panel shows what the graph itself knows:
the feature's direct effects on the output logits (its edges into logit nodes), see `logit_effects`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tracer.layout import NodeKind
from viewer.model import GraphView


@dataclass(frozen=True)
class Example:
    """One top-activating context: its tokens and the feature's activation on each."""

    tokens: list[str]
    activations: list[float]


@dataclass(frozen=True)
class FeatureDescription:
    top_tokens: list[tuple[str, float]] = field(default_factory=list)  # logit effects of its decoders, largest
    bottom_tokens: list[tuple[str, float]] = field(default_factory=list)  # most negative logit effects
    examples: list[Example] = field(default_factory=list)  # top-activating contexts, strongest first
    histogram: tuple[list[float], list[int]] | None = None  # activation bin edges [n+1] and counts [n]
    frequency: float | None = None  # share of tokens on which the feature fires


class FeatureStore(Protocol):
    def describe(self, layer: int, feature: int) -> FeatureDescription | None:
        """Everything known about one feature, or None when the store does not have it."""
        ...


def logit_effects(view: GraphView, node_id: str, limit: int = 8) -> list[tuple[str, float]]:
    """The node's direct edges into output logits in this graph: (token, weight), largest |weight| first."""
    i = view.row.get(node_id)
    if i is None:
        return []
    out = [e for e in view.outgoing(i) if view.kind[view.tgt[e]] == NodeKind.LOGIT.code]
    out.sort(key=lambda e: -abs(view.weight[e]))
    return [(view.graph.nodes[int(view.tgt[e])].token or "", float(view.weight[e])) for e in out[:limit]]
