"""Sparse edge-attribution kernels: a torch reference (CPU path) and a Triton kernel, behind one dispatch.

See kernels/README.md for the math, the shape contract and when each path pays.
"""

from kernels.dispatch import ENV_VAR, EdgePlan, KernelBackend, edge_attribution, plan_edges, resolve_backend
from kernels.reference import GroupCost, TorchEdgePlan, plan_edges_torch

__all__ = [
    "ENV_VAR",
    "EdgePlan",
    "GroupCost",
    "KernelBackend",
    "TorchEdgePlan",
    "edge_attribution",
    "plan_edges",
    "plan_edges_torch",
    "resolve_backend",
]
