"""Synthetic attribution graphs for pruning, scoring, graph-file and export tests (no model needed).

`random_attribution` draws a random sparse DAG that respects the layout: a feature or error at layer l and an
embedding (layer -1) feed features at later layers and the logits (layer n_layers), never earlier positions.
`attribution_from_dense` wraps a small hand-written matrix.
"""

from __future__ import annotations

import torch

from tracer.layout import NodeKind, NodeLayout
from tracer.result import Attribution


def allowed_edges(layout: NodeLayout) -> torch.Tensor:
    """[n_nodes, n_nodes] bool: target t may read source s (s sits at a lower layer and not a later position)."""
    kind, layer, pos = layout.table[:, 0], layout.table[:, 1], layout.table[:, 2]
    is_target = (kind == NodeKind.FEATURE.code) | (kind == NodeKind.LOGIT.code)
    is_source = kind != NodeKind.LOGIT.code
    return (is_target[:, None] & is_source[None, :] & (layer[None, :] < layer[:, None])
            & (pos[None, :] <= pos[:, None]))  # fmt: skip


def attribution_from_dense(dense: torch.Tensor, layout: NodeLayout, logit_probs: torch.Tensor, seed: int = 0,
                           token_strs: list[str] | None = None) -> Attribution:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    n_logits = layout.count(NodeKind.LOGIT)
    return Attribution(
        layout=layout, adjacency=dense.to_sparse_coo().coalesce(),
        activations=torch.rand(layout.count(NodeKind.FEATURE), generator=g, dtype=torch.float64) + 0.5,
        logit_probs=logit_probs, error_norms=torch.rand(layout.n_layers, layout.n_pos, generator=g),
        token_strs=token_strs or [f"t{i}" for i in range(layout.n_pos)],
        logit_strs=[f" w{k}" for k in range(n_logits)], timings={"attribute": 1.25}, stats={"checked": 1.0},
    )  # fmt: skip


def random_layout(n_layers: int = 3, n_pos: int = 5, max_per_cell: int = 3, n_logits: int = 3, vocab: int = 50,
                  d_features: int = 20, seed: int = 0) -> NodeLayout:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    feats = []
    for layer in range(n_layers):
        for p in range(n_pos):
            k = int(torch.randint(0, max_per_cell + 1, (1,), generator=g))
            idx = torch.randperm(d_features, generator=g)[:k].sort().values
            feats += [(layer, p, int(i)) for i in idx]
    tokens = torch.randint(0, vocab, (n_pos,), generator=g)
    logit_tokens = torch.randperm(vocab, generator=g)[:n_logits]
    return NodeLayout(n_layers, tokens, torch.tensor(feats, dtype=torch.long).reshape(-1, 3), logit_tokens)


def random_attribution(n_layers: int = 3, n_pos: int = 5, max_per_cell: int = 3, n_logits: int = 3,
                       density: float = 0.5, seed: int = 0, dtype: torch.dtype = torch.float32,
                       ) -> Attribution:  # fmt: skip
    """A random graph; logit probabilities sorted descending, summing to < 1. Token 1 is a newline."""
    layout = random_layout(n_layers, n_pos, max_per_cell, n_logits, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    n = layout.n_nodes
    mask = allowed_edges(layout) & (torch.rand(n, n, generator=g) < density)
    dense = torch.where(mask, torch.randn(n, n, generator=g, dtype=torch.float64), 0.0).to(dtype)
    probs = torch.rand(n_logits, generator=g).sort(descending=True).values
    probs = (0.9 * probs / probs.sum()).to(torch.float32)
    strs = [f"t{i}" if i != 1 else "\n" for i in range(n_pos)]
    return attribution_from_dense(dense, layout, probs, seed=seed, token_strs=strs)
