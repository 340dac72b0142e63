"""Synthetic attribution graphs of any size, for the viewer's tests, screenshots and benchmark (no model needed).

1. layout: BOS + tokens, `n_features` distinct (layer, position > 0, index) features, `n_logits` logit targets.
2. adjacency: every target (feature or logit) gets `edges_per_target` random sources among the nodes strictly
   below it (lower layer; embeddings below everything) at the same or an earlier position, so it is a DAG; weights
   ~N(0.3, 1) (mostly excitatory), seeded.
3. graph file: pruned with tracer.prune (or every node kept with `keep_all`), built with build_graph_file.
"""

from __future__ import annotations

import numpy as np
import torch

from tracer.csr import CsrAdjacency
from tracer.graphfile import build_graph_file
from tracer.layout import NodeKind, NodeLayout
from tracer.prune import PruneResult, cumulative_share, logit_weights, node_influence, prune
from tracer.result import Attribution
from tracer.schema import GraphFile, Identity

WORDS = ["The", " capital", " of", " France", " is", " a", " city", " in", " Europe", " and", " it", " has"]


def synthetic_attribution(n_layers: int = 3, n_pos: int = 5, n_features: int = 24, n_logits: int = 3,
                          edges_per_target: int = 6, n_edges: int | None = None,
                          seed: int = 0) -> Attribution:  # fmt: skip
    """n_edges: an exact edge count, reached by giving the logit targets whatever the features leave over."""
    rng = np.random.default_rng(seed)
    # 1. layout
    cells = rng.choice(n_layers * (n_pos - 1) * 4096, size=n_features, replace=False)
    layer, rest = cells // ((n_pos - 1) * 4096), cells % ((n_pos - 1) * 4096)
    feats = np.stack([layer, 1 + rest // 4096, rest % 4096], 1)
    feats = feats[np.lexsort((feats[:, 2], feats[:, 1], feats[:, 0]))]
    layout = NodeLayout(n_layers, torch.arange(n_pos) + 100, torch.from_numpy(feats).long(),
                        torch.arange(n_logits) + 200)  # fmt: skip
    # 2. adjacency
    t = layout.table.numpy()
    level = np.where(t[:, 0] == NodeKind.EMBEDDING.code, -1, t[:, 1])
    rows, cols = [], []
    for kind in (NodeKind.FEATURE, NodeKind.LOGIT):  # features first: they fix what the logits get
        targets = np.flatnonzero(t[:, 0] == kind.code)
        want = np.full(len(targets), edges_per_target)
        if kind is NodeKind.LOGIT and n_edges is not None:
            want = np.diff(np.linspace(0, n_edges - len(rows), len(targets) + 1).round()).astype(np.int64)
        for target, k in zip(targets, want, strict=True):
            cand = np.flatnonzero(
                (level < level[target]) & (t[:, 2] <= t[target, 2]) & (t[:, 0] != NodeKind.LOGIT.code)
            )
            src = rng.choice(cand, size=min(int(k), len(cand)), replace=False)
            rows += [target] * len(src)
            cols += src.tolist()
    values = torch.from_numpy(rng.normal(0.3, 1.0, size=len(rows))).float()
    adjacency = torch.sparse_coo_tensor(
        torch.tensor([rows, cols]), values, (layout.n_nodes,) * 2, check_invariants=True
    ).coalesce()
    probs = torch.from_numpy(np.sort(rng.dirichlet(np.ones(n_logits)))[::-1].copy()).float() * 0.9
    tokens = ["<bos>", *(WORDS[i % len(WORDS)] for i in range(n_pos - 1))]
    return Attribution(layout=layout, adjacency=CsrAdjacency.of(adjacency),
                       activations=torch.from_numpy(rng.gamma(2.0, 1.0, n_features)).float(), logit_probs=probs,
                       error_norms=torch.from_numpy(rng.gamma(2.0, 0.5, (n_layers, n_pos))).float(),
                       token_strs=tokens, logit_strs=[f" tok{i}" for i in range(n_logits)])  # fmt: skip


def keep_all(attribution: Attribution) -> PruneResult:
    """A PruneResult that keeps every node and edge (for graphs of an exact size)."""
    adj = attribution.adjacency
    a = (adj if isinstance(adj, torch.Tensor) else adj.to_sparse_coo()).coalesce()  # CSR since tracer.csr
    infl = node_influence(a, logit_weights(attribution.layout, attribution.logit_probs))
    n = attribution.layout.n_nodes
    return PruneResult(torch.ones(n, dtype=torch.bool), a, infl, cumulative_share(infl), a.double(), 1.0, 1.0, 0.0)


def synthetic_graph(attribution: Attribution, prompt: str = "The capital of France is", all_nodes: bool = False,
                    node_threshold: float = 0.8, edge_threshold: float = 0.98) -> GraphFile:  # fmt: skip
    """3. The graph file of a synthetic attribution."""
    result = keep_all(attribution) if all_nodes else prune(attribution, node_threshold=node_threshold,
                                                           edge_threshold=edge_threshold)  # fmt: skip
    return build_graph_file(attribution, result, prompt=prompt, model=Identity(name="synthetic", content_hash="0"),
                            transcoders=Identity(name="synthetic-clt", content_hash="0", kind="clt"),
                            settings={"node_threshold": node_threshold, "edge_threshold": edge_threshold})  # fmt: skip
