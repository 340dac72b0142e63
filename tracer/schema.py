"""GraphFile: the versioned JSON document of one traced prompt (pydantic v2), plus its id conventions.

A graph file `NAME.json` holds the pruned graph (nodes, edges), metadata and the viewer's state; its sidecar
`NAME.adjacency.safetensors` holds the unpruned sparse adjacency and NodeLayout, so re-pruning needs no re-trace.
Loading: 1. parse JSON; 2. migrate older schema versions step by step; 3. validate.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tracer.layout import NodeKind, NodeRef

SCHEMA_VERSION = 3


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


def node_id(ref: NodeRef) -> str:
    """Stable, unique, readable id of a node: `F{layer}.{feature}@{pos}`, `ERR{layer}@{pos}`, `EMB@{pos}`,
    `LOGIT{token_id}@{pos}`."""
    return {
        NodeKind.FEATURE: f"F{ref.layer}.{ref.index}@{ref.pos}",
        NodeKind.ERROR: f"ERR{ref.layer}@{ref.pos}",
        NodeKind.EMBEDDING: f"EMB@{ref.pos}",
        NodeKind.LOGIT: f"LOGIT{ref.index}@{ref.pos}",
    }[ref.kind]


class GraphNode(Strict):
    id: str = Field(description="unique node id, see node_id()")
    kind: NodeKind
    layer: int = Field(description="-1 for embeddings, n_layers for logits")
    pos: int = Field(description="token position (0 = BOS)")
    feature: int | None = Field(default=None, description="feature index (features only)")
    token_id: int | None = Field(default=None, description="token id (embeddings and logits)")
    token: str | None = Field(default=None, description="readable token (embeddings and logits)")
    probability: float | None = Field(default=None, description="output probability (logits only)")
    activation: float | None = Field(default=None, description="feature activation, or error-vector norm")
    influence: float = Field(default=0.0, description="influence on the logit targets (pruning score)")
    target_influence: float | None = Field(default=None, description="influence on the primary logit target alone "
                                           "(metadata.effects_target; None in files older than schema 3)")
    signed_effect: float | None = Field(default=None, description="signed total effect on the primary target: the "
                                        "sum over all paths (tracer.effects); removing the node is predicted to "
                                        "change that logit by minus this")
    label: str = Field(default="", description="human label (clerp); rendered as plain text")


class GraphEdge(Strict):
    source: str
    target: str
    weight: float = Field(description="direct effect A[target, source]")
    weight_normalized: float = Field(description="weight / sum of |incoming weights| of the target (unpruned)")


class Identity(Strict):
    name: str
    content_hash: str = Field(description="sha256 prefix of the weight files")
    kind: str = Field(default="", description="architecture family, or transcoder kind (clt/plt)")


class Scores(Strict):
    replacement: float = Field(description="token influence / (token + error influence)")
    completeness: float = Field(description="influence-weighted share of inputs not from error nodes")


class Supernode(Strict):
    label: str
    members: list[str]


class ViewState(Strict):
    clicked: str | None = None
    pinned: list[str] = Field(default_factory=list)
    supernodes: list[Supernode] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict, description="node id -> edited label")
    node_threshold: float | None = Field(default=None, description="viewer's re-pruning threshold, if changed")


class Metadata(Strict):
    prompt: str
    tokens: list[str] = Field(description="readable prompt tokens incl. BOS")
    token_ids: list[int]
    model: Identity
    transcoders: Identity
    n_layers: int
    settings: dict[str, float | int | str | bool | None | list[str]] = Field(description="all trace settings")
    timings: dict[str, float] = Field(default_factory=dict, description="phase -> seconds")
    scores: Scores = Field(description="scores of the unpruned graph")
    pruned_scores: Scores | None = Field(default=None, description="scores of the pruned graph")
    n_nodes_unpruned: int
    n_edges_unpruned: int
    created: str = Field(description="ISO 8601 UTC time of the trace")
    tracer_version: str
    adjacency_file: str | None = Field(default=None, description="sidecar file with the unpruned adjacency")
    effects_target: str | None = Field(default=None, description="the logit target that nodes' target_influence "
                                       "and signed_effect refer to (the first, most probable one)")
    adjacency_hash: str | None = Field(default=None, description="content hash of that sidecar, as it records it")
    adjacency_size: int | None = Field(default=None, description="that sidecar's size in bytes")


class GraphFile(Strict):
    schema_version: int = SCHEMA_VERSION
    metadata: Metadata
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    view: ViewState = Field(default_factory=lambda: ViewState())
