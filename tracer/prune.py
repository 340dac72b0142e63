"""Pruning: keep the nodes and edges of an attribution graph that matter for the logit targets.

Circuit-tracer's `prune_graph`, on the CSR adjacency and then the kept nodes' edge list (never a dense matrix):
1. normalise: Â = |A| with each row divided by its sum (clamped at 1e-10); stored zeros are no edges.
2. influence: w = logit probabilities on logit rows, 0 elsewhere; I = wᵀ(Â + Â² + …). On the whole graph (CSR):
   one pass over the edges in the layout's topological order (tracer.csr.influence). On the kept nodes' edge
   list: the vector power series v ← vÂ, which ends exactly (v = 0) because Â is nilpotent (the graph is a DAG),
   capped at the DAG's depth (n_layers + 1 when every edge goes to a later layer, else n_nodes). NaN/Inf are
   refused first.
3. node_threshold: sort I descending and keep the smallest prefix covering `node_threshold` of ΣI (ties kept);
   tokens and logits are always kept, errors only on merit.
4. edge_threshold (on the edge list of the kept nodes only): A' = A restricted to kept nodes;
   I' = wᵀ(Â' + Â'² + …) + w; edge score E[t,s] = Â'[t,s]·I'[t];
   keep the edges covering `edge_threshold` of ΣE.
5. dangling: until stable, drop features and errors with no kept outgoing edge and features with no kept incoming
   edge, then the edges touching dropped nodes.
Each node's *cumulative* influence fraction (sorted by I descending; smaller = more important) is what
circuit-tracer writes to JSON `influence`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

import torch

from tracer.csr import ROW_SUM_MIN, CsrAdjacency, influence
from tracer.errors import ConfigError, GraphFileError
from tracer.layout import NodeKind, NodeLayout
from tracer.result import Attribution
from tracer.schema import node_id

if TYPE_CHECKING:  # networkx (~60 ms to import) only for to_networkx, which `tracer trace` never calls
    import networkx as nx


class Edges(NamedTuple):
    """A sparse graph as an edge list (coalesced COO, row-major): rows are targets, cols sources."""

    rows: torch.Tensor  # [nnz] int64 target rows
    cols: torch.Tensor  # [nnz] int64 source rows
    values: torch.Tensor  # [nnz] edge weights
    n: int  # n_nodes

    @classmethod
    def of(cls, adjacency: torch.Tensor | CsrAdjacency) -> Edges:
        """From a CsrAdjacency or a sparse COO/CSR (or, for small tests, dense) [n_nodes, n_nodes] matrix; stored
        zeros dropped. int64 indices: for small graphs (pruned, folded, tests), not a whole trace."""
        if isinstance(adjacency, CsrAdjacency):
            rows, cols, vals = adjacency.select(torch.ones(adjacency.n, dtype=torch.bool))
            nz = vals != 0
            return cls(rows[nz], cols[nz], vals[nz], adjacency.n)
        if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
            raise GraphFileError(f"adjacency must be a square matrix, got shape {tuple(adjacency.shape)}")
        a = adjacency.to_sparse_coo() if adjacency.layout != torch.sparse_coo else adjacency
        a = a.coalesce()
        rows, cols = a.indices()
        vals = a.values()
        nz = vals != 0
        return cls(rows[nz], cols[nz], vals[nz], int(adjacency.shape[0]))

    def subset(self, keep: torch.Tensor) -> Edges:
        return Edges(self.rows[keep], self.cols[keep], self.values[keep], self.n)

    def sparse(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """Sparse COO [n, n] of these edges (with other values on the same pattern, if given)."""
        v = self.values if values is None else values
        idx = torch.stack([self.rows, self.cols])
        return torch.sparse_coo_tensor(idx, v, (self.n, self.n), check_invariants=False).coalesce()


class PruneResult(NamedTuple):
    node_mask: torch.Tensor  # [n_nodes] bool: nodes kept
    adjacency: torch.Tensor  # sparse COO [n_nodes, n_nodes]: the kept edges with their raw weights A[t, s]
    node_influence: torch.Tensor  # [n_nodes] float64 influence I of every node in the *unpruned* graph
    cumulative_influence: torch.Tensor  # [n_nodes] float64 cumulative share of ΣI up to this node (sorted by I)
    edge_score: torch.Tensor  # sparse COO [n_nodes, n_nodes] float64, same pattern as `adjacency`: E[t, s]
    node_threshold: float
    edge_threshold: float
    seconds: float  # wall time of prune()

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges(self) -> int:
        return int(self.adjacency._nnz())


# 1. normalise and 2. influence


def normalized(edges: Edges) -> torch.Tensor:
    """[nnz] float64 values of Â: |A| divided by its row's |A| sum (clamped at 1e-10)."""
    absv = edges.values.abs().double()
    row_sum = torch.zeros(edges.n, dtype=torch.float64).index_add_(0, edges.rows, absv)
    return absv / row_sum.clamp_min(ROW_SUM_MIN)[edges.rows]


def influence_series(edges: Edges, ahat: torch.Tensor, weights: torch.Tensor, max_depth: int | None = None
                     ) -> torch.Tensor:  # fmt: skip
    """[n] float64 wᵀ(Â + Â² + …) for Â given by `edges` and its values `ahat`; ends when the term vanishes.
    max_depth: the longest path of the DAG (default n_nodes): the series has at most that many terms."""
    if not bool(torch.isfinite(ahat).all()) or not bool(torch.isfinite(weights).all()):
        raise GraphFileError("adjacency or logit weights hold NaN/Inf: influence is undefined")
    v = weights.double()
    total = torch.zeros(edges.n, dtype=torch.float64)
    steps = edges.n if max_depth is None else min(max_depth, edges.n)
    for _ in range(steps + 1):
        v = torch.zeros(edges.n, dtype=torch.float64).index_add_(0, edges.cols, v[edges.rows] * ahat)
        if not v.any():
            return total
        total += v
    raise GraphFileError(f"adjacency has a cycle: influence did not vanish after {steps} steps (not a DAG)")


def dag_depth(edges: Edges, layout: NodeLayout) -> int | None:
    """The longest path any graph of this layout can have when every edge goes to a later layer (embeddings at
    -1, logits at n_layers): n_layers + 1 edges. None when some edge does not (a hand-built graph)."""
    layer = layout.table[:, 1]
    if edges.rows.numel() and not bool((layer[edges.rows] > layer[edges.cols]).all()):
        return None
    return layout.n_layers + 1


def node_influence(adjacency: torch.Tensor | CsrAdjacency, weights: torch.Tensor, layout: NodeLayout | None = None
                   ) -> torch.Tensor:  # fmt: skip
    """Influence of every node on the weighted targets.

    adjacency: CsrAdjacency or torch sparse/dense [n_nodes, n_nodes], A[target, source] (a DAG).
    weights: [n_nodes] target weights w (logit probabilities on logit rows, 0 elsewhere).
    layout: when given, its topological levels make this one pass over the edges.
    Returns [n_nodes] float64 I = wᵀ(Â + Â² + …) with Â the row-normalised |A|.
    """
    return influence(CsrAdjacency.of(adjacency), weights, layout.levels() if layout is not None else None)


def logit_weights(layout: NodeLayout, logit_probs: torch.Tensor) -> torch.Tensor:
    """[n_nodes] float64 w: each logit target's probability on its row, 0 elsewhere."""
    w = torch.zeros(layout.n_nodes, dtype=torch.float64)
    w[layout.logit_rows()] = logit_probs.double()
    return w


def cumulative_share(scores: torch.Tensor) -> torch.Tensor:
    """[n] each entry's cumulative share of Σscores when sorted descending (ties in row order)."""
    s, order = torch.sort(scores, descending=True, stable=True)
    out = torch.zeros_like(scores, dtype=torch.float64)
    out[order] = s.double().cumsum(0) / s.double().sum().clamp_min(torch.finfo(torch.float64).tiny)
    return out


def threshold_value(scores: torch.Tensor, fraction: float) -> float:
    """The score cut keeping the smallest descending prefix that covers `fraction` of Σscores (+inf if none)."""
    if scores.numel() == 0 or float(scores.sum()) <= 0:
        return float("inf")
    s = torch.sort(scores.double(), descending=True).values
    cum = s.cumsum(0) / s.sum()
    idx = min(int(torch.searchsorted(cum, torch.tensor([fraction], dtype=torch.float64))), len(s) - 1)
    return float(s[idx])


# 3.-5. pruning


def prune(
    graph: Attribution | CsrAdjacency | torch.Tensor,
    layout: NodeLayout | None = None,
    logit_probs: torch.Tensor | None = None,
    *,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    rank: torch.Tensor | None = None,
) -> PruneResult:
    """Prune an attribution graph (module docstring, steps 1-5).

    rank: [n_nodes] node scores that step 3 sorts instead of I (tracer.effects.node_ranking: influence on the
    primary target alone, or |signed total effect|); cumulative influence is still I's.

    Call as `prune(attribution, node_threshold=..., edge_threshold=...)` or
    `prune(adjacency, layout, logit_probs, ...)` with adjacency a CsrAdjacency or torch sparse [n_nodes, n_nodes] and
    logit_probs [n_logits].
    """
    t0 = time.perf_counter()
    if isinstance(graph, Attribution):
        adjacency, layout, logit_probs = graph.adjacency, graph.layout, graph.logit_probs
    else:
        adjacency = graph
    if layout is None or logit_probs is None:
        raise ConfigError("prune needs an Attribution, or adjacency together with layout and logit_probs")
    for name, x in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= x <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {x}")
    csr = CsrAdjacency.of(adjacency)
    if csr.n != layout.n_nodes:
        raise GraphFileError(f"adjacency has {csr.n} rows but the layout has {layout.n_nodes} nodes")
    w = logit_weights(layout, logit_probs)

    # 1.-2. influence on the unpruned graph
    infl = influence(csr, w, layout.levels())
    # 3. node_threshold
    always = layout.mask(NodeKind.EMBEDDING) | layout.mask(NodeKind.LOGIT)
    by = infl if rank is None else rank.double()
    node_mask = (by >= threshold_value(by, node_threshold)) | always
    # 4. edge_threshold
    rows, cols, vals = csr.select(node_mask, node_mask)
    nz = vals != 0
    sub = Edges(rows[nz], cols[nz], vals[nz], csr.n)
    ahat = normalized(sub)
    score = ahat * (influence_series(sub, ahat, w, dag_depth(sub, layout)) + w)[sub.rows]
    edge_keep = score >= threshold_value(score, edge_threshold)
    # 5. dangling
    node_mask, edge_keep = _drop_dangling(sub, edge_keep, node_mask, layout)

    kept = sub.subset(edge_keep)
    return PruneResult(node_mask, kept.sparse(), infl, cumulative_share(infl), kept.sparse(score[edge_keep]),
                       node_threshold, edge_threshold, time.perf_counter() - t0)  # fmt: skip


def _drop_dangling(
    edges: Edges, edge_keep: torch.Tensor, node_mask: torch.Tensor, layout: NodeLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 5: features/errors need a kept outgoing edge, features a kept incoming one; repeat until stable."""
    feat = layout.mask(NodeKind.FEATURE)
    needs_out = feat | layout.mask(NodeKind.ERROR)
    node_mask = node_mask.clone()
    while True:
        has_out = torch.bincount(edges.cols[edge_keep], minlength=edges.n) > 0
        has_in = torch.bincount(edges.rows[edge_keep], minlength=edges.n) > 0
        new = node_mask & ~(needs_out & ~has_out) & ~(feat & ~has_in)
        if torch.equal(new, node_mask):
            return node_mask, edge_keep
        node_mask = new
        edge_keep = edge_keep & node_mask[edges.rows] & node_mask[edges.cols]


# the pruned graph as networkx


class RowValues(NamedTuple):
    """Per-row node values of an Attribution (NaN / None where a kind has none)."""

    activation: torch.Tensor  # [n_nodes] feature activation, or error-vector norm for errors
    probability: torch.Tensor  # [n_nodes] logit probability
    text: dict[int, str]  # row -> readable token, for embeddings and logits

    @classmethod
    def of(cls, attribution: Attribution) -> RowValues:
        lay = attribution.layout
        n = lay.n_nodes
        act = torch.full((n,), float("nan"), dtype=torch.float64)
        act[lay.feature_rows()] = attribution.activations.double()
        err = lay.error_rows(torch.arange(lay.n_layers)[:, None], torch.arange(lay.n_pos)[None, :])
        act[err.reshape(-1)] = attribution.error_norms.double().reshape(-1)
        prob = torch.full((n,), float("nan"), dtype=torch.float64)
        prob[lay.logit_rows()] = attribution.logit_probs.double()
        text = dict(zip(lay.embedding_rows(torch.arange(lay.n_pos)).tolist(), attribution.token_strs, strict=True))
        text |= dict(zip(lay.logit_rows().tolist(), attribution.logit_strs, strict=True))
        return cls(act, prob, text)


def to_networkx(attribution: Attribution, result: PruneResult) -> nx.DiGraph:
    """The pruned graph: nodes keyed by schema.node_id with attributes kind, layer, pos, index, influence,
    cumulative_influence, activation (features, errors), token (embeddings, logits), probability (logits);
    edges source -> target with attribute weight (A[target, source])."""
    import networkx as nx

    lay = attribution.layout
    vals = RowValues.of(attribution)
    g = nx.DiGraph()
    ids: dict[int, str] = {}
    for row in result.node_mask.nonzero().flatten().tolist():
        ref = lay.node(row)
        ids[row] = node_id(ref)
        attrs = dict(kind=ref.kind.value, layer=ref.layer, pos=ref.pos, index=ref.index,
                     influence=float(result.node_influence[row]),
                     cumulative_influence=float(result.cumulative_influence[row]))  # fmt: skip
        for key, t in (("activation", vals.activation), ("probability", vals.probability)):
            if not torch.isnan(t[row]):
                attrs[key] = float(t[row])
        if row in vals.text:
            attrs["token"] = vals.text[row]
        g.add_node(ids[row], **attrs)
    a = result.adjacency.coalesce()
    for (t, s), wt in zip(a.indices().T.tolist(), a.values().tolist(), strict=True):
        g.add_edge(ids[s], ids[t], weight=wt)
    return g
