"""Effects on one target: influence on the primary logit alone, and the signed total effect of every node on it.

On the unpruned adjacency A[target, source] (a DAG; rows targets, columns sources) with the primary target row t
(logit target 0: the most probable token, or the custom --target):
1. target influence: I_t = e_tᵀ(Â + Â² + …) with Â the row-normalised |A| (tracer.prune.node_influence with
   weight 1 on row t): the share of the target's attribution that flows through each node, unsigned.
2. signed total effect: the graph's linear prediction of how much each node's contribution moves the target.
   A[m, s] is the change of m's pre-activation caused by s; A[t', m] is the effect of m's whole activation a_m.
   A feature that stays active responds to its pre-activation with slope 1, so the effect of one unit of m's
   pre-activation is A[t', m] / a_m. With D = diag(1/a) on feature columns (1 elsewhere) and Ã = A·D:
       T = e_tᵀ (I - Ã)⁻¹ A = Σ_k e_tᵀ Ã^k A,
   the sum over all paths s -> … -> t of the edge weights, each intermediate feature's edge divided by its
   activation. Removing node s is predicted to change the target by -T[s]. Computed as a vector power series
   (wᵀ = vᵀA, T += w, v = w·D) over the edge list, which ends exactly because Ã is nilpotent (DAG); capped at
   n_nodes steps. Holding a group's rows (D = 0 there) cuts paths through them: Σ_{s in group} T[s] is then the
   prediction for removing the whole group (a supernode).
Both are [n_nodes] float64; the target row itself gets 0.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import torch

from tracer.csr import CsrAdjacency, paths
from tracer.layout import NodeLayout
from tracer.prune import node_influence
from tracer.result import Attribution


class RankBy(str, Enum):
    """What `tracer prune --rank-by` sorts nodes by for the node threshold."""

    INFLUENCE = "influence"  # influence on all logit targets, weighted by probability (circuit-tracer's)
    TARGET_INFLUENCE = "target-influence"  # influence on the primary target alone
    SIGNED_EFFECT = "signed-effect"  # |signed total effect| on the primary target


class Effects(NamedTuple):
    target_row: int  # adjacency row of the primary target
    target_influence: torch.Tensor  # [n_nodes] float64 unsigned influence on the primary target alone
    signed_effect: torch.Tensor  # [n_nodes] float64 signed total effect on the primary target (see module doc)


def activation_scale(layout: NodeLayout, activations: torch.Tensor) -> torch.Tensor:
    """[n_nodes] float64 D: 1 / activation on feature rows (0 where the activation is 0), 1 elsewhere."""
    d = torch.ones(layout.n_nodes, dtype=torch.float64)
    a = activations.double()
    d[layout.feature_rows()] = torch.where(a != 0, 1.0 / a.where(a != 0, 1.0), 0.0)
    return d


def signed_total_effect(adjacency, layout: NodeLayout, activations: torch.Tensor, target_row: int,
                        held: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Step 2: adjacency (sparse torch [n, n] or tracer.csr.CsrAdjacency) -> [n_nodes] float64 T.
    held: [n_nodes] bool rows whose activations do not respond (paths through them are cut): with a group's rows
    held, Σ_{s in group} T[s] is the linear prediction for removing the whole group."""
    d = activation_scale(layout, activations)
    if held is not None:
        d = d.masked_fill(held, 0.0)
    e = torch.zeros(layout.n_nodes, dtype=torch.float64)
    e[target_row] = 1.0
    # T = Σ_k v_kᵀA with v_0 = e_t, v_{k+1} = (v_kᵀA)∘d: tracer.csr.paths (one pass in the layout's topological order)
    return paths(CsrAdjacency.of(adjacency), e, d, layout.levels())


def effects(attribution: Attribution, k: int = 0) -> Effects:
    """Steps 1-2 for logit target k (default 0, the primary target) of an unpruned attribution."""
    lay = attribution.layout
    row = int(lay.logit_rows(k))
    w = torch.zeros(lay.n_nodes, dtype=torch.float64)
    w[row] = 1.0
    signed = signed_total_effect(attribution.adjacency, lay, attribution.activations, row)
    infl = node_influence(attribution.adjacency, w, lay)
    infl[row] = 0.0
    return Effects(row, infl, signed)


def node_ranking(attribution: Attribution, rank_by: RankBy | str) -> torch.Tensor | None:
    """[n_nodes] scores for tracer.prune.prune(rank=...), or None for the default (influence)."""
    rank_by = RankBy(rank_by)
    if rank_by == RankBy.INFLUENCE:
        return None
    eff = effects(attribution)
    return eff.target_influence if rank_by == RankBy.TARGET_INFLUENCE else eff.signed_effect.abs()
