"""Graph scores: how much of the path from tokens to logits runs through features rather than error nodes.

On a sparse adjacency A (rows targets, cols sources) with layout and logit probabilities:
1. fold (only for a node subset `keep_mask`): each removed feature's outgoing edges are added to the error node at
   its layer and position, and its incoming edges are dropped, so its share of the computation counts as
   unexplained. Tokens and logits always stay (pruning keeps them too), and so do errors: a removed error node is
   still the bin of its layer and position.
2. influence: Â = row-normalised |A|, w = logit probabilities, I = wᵀ(Â + Â² + …) (tracer.prune).
3. replacement = Σ_tokens I / (Σ_tokens I + Σ_errors I): the share of end-to-end token influence not through errors.
4. completeness = Σ_n (1 − Σ_{s ∈ errors} Â[n, s])·(I_n + w_n) / Σ_n (I_n + w_n): the influence-weighted share of
   each node's inputs that do not come from error nodes.
A degenerate graph (no token or error influence at all) scores 0.
"""

from __future__ import annotations

import torch

from tracer.csr import ROW_SUM_MIN, CsrAdjacency, influence
from tracer.layout import NodeKind, NodeLayout
from tracer.prune import Edges, logit_weights
from tracer.schema import Scores


def graph_scores(
    adjacency: torch.Tensor | CsrAdjacency, layout: NodeLayout, logit_probs: torch.Tensor,
    keep_mask: torch.Tensor | None = None, node_influence: torch.Tensor | None = None,
) -> Scores:  # fmt: skip
    """Replacement and completeness scores.

    adjacency: CsrAdjacency or torch sparse [n_nodes, n_nodes] unpruned A[target, source]; logit_probs: [n_logits];
    keep_mask: [n_nodes] bool node subset to score (None: the whole graph), e.g. PruneResult.node_mask;
    node_influence: the unpruned graph's I when already known (PruneResult.node_influence; ignored with keep_mask).
    """
    csr = CsrAdjacency.of(adjacency)
    if keep_mask is not None:
        csr, node_influence = fold(csr, layout, keep_mask), None
    w = logit_weights(layout, logit_probs)
    infl = influence(csr, w, layout.levels()) if node_influence is None else node_influence  # 2.

    # 3. replacement
    tok = float(infl[layout.mask(NodeKind.EMBEDDING)].sum())
    err_rows = layout.rows(NodeKind.ERROR)
    err = float(infl[err_rows].sum())
    replacement = tok / (tok + err) if tok + err > 0 else 0.0
    # 4. completeness
    from_err = csr.abs_sums_from(err_rows) / csr.row_abs_sums.clamp_min(ROW_SUM_MIN)
    out = infl + w
    total = float(out.sum())
    completeness = float(((1 - from_err) * out).sum()) / total if total > 0 else 0.0
    return Scores(replacement=replacement, completeness=completeness)


def fold(adjacency: CsrAdjacency, layout: NodeLayout, keep_mask: torch.Tensor) -> CsrAdjacency:
    """Step 1: merge every removed feature into the error node at its layer and position (the result holds the
    kept rows only, as small as the kept node set)."""
    removed = ~keep_mask.bool() & layout.mask(NodeKind.FEATURE)
    bin_row = torch.arange(adjacency.n)
    r = removed.nonzero().flatten()
    bin_row[r] = layout.error_rows(layout.table[r, 1], layout.table[r, 2])
    rows, cols, vals = adjacency.select(~removed)  # a removed node's inputs go with it
    merged = Edges(rows, bin_row[cols], vals, adjacency.n)
    return CsrAdjacency.of(merged.sparse())  # coalesce: a folded edge adds to the error's edge to the same target
