"""What attribution hands to pruning, scoring and the graph file: the unpruned sparse graph of one prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tracer.csr import CsrAdjacency
from tracer.layout import NodeLayout


@dataclass
class Attribution:
    """The unpruned attribution graph. Rows are targets, columns sources (see NodeLayout for the order)."""

    layout: NodeLayout
    # [n_nodes, n_nodes] A[target, source] = direct effect, as CSR (tracer.csr; int32 columns, float32 values).
    # A torch sparse or dense matrix given here is converted.
    adjacency: CsrAdjacency
    activations: torch.Tensor  # [n_features] activation of each feature node
    logit_probs: torch.Tensor  # [n_logits] probability of each logit target (its weight in pruning)
    error_norms: torch.Tensor  # [n_layers, n_pos] L2 norm of each error vector
    token_strs: list[str]  # [n_pos] readable prompt tokens (BOS included)
    logit_strs: list[str]  # [n_logits] readable target tokens
    timings: dict[str, float] = field(default_factory=dict)  # phase name -> seconds
    # checks and counters: max |logit error| of the replacement model, GFLOP of the row phases
    stats: dict[str, float] = field(default_factory=dict)
    row_mass_kept: torch.Tensor | None = None  # [n_nodes] share of |row| kept by --edge-topk (None: exact)

    def __post_init__(self) -> None:
        self.adjacency = CsrAdjacency.of(self.adjacency)
