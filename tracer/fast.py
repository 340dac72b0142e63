"""The bf16 fast path of the row phase (`tracer trace --dtype bf16`).

CPUs with AVX512-BF16 or AMX multiply bf16 matrices several times faster than fp32 (oneDNN accumulates each
product in fp32 and rounds the result to bf16). The fast path runs the rows' linear maps in bf16:
1. maps: tracer.backward.ReplacementBackward in bf16: its folded per-layer maps (attention's O and V and the skip
   matrix with the norms' gains and centring folded in) are computed in float64 from the fp32 model and rounded
   to bf16 once, as are the recorded patterns and norm denominators;
2. rows: the backward runs in bf16 (most of the row phase's work); its gradients stay bf16 for the edge kernel and
   the error and token dot products (tracer.attribute.RowBuilder, whose decoder rows, errors and embeddings are
   bf16 copies): widening them to fp32 cost as much as the kernel itself;
3. everything else stays fp32: the recorded forward pass, the stored edges (widened as each row is stored),
   assembly, pruning and the replacement check. fp32 stays the default and exact.
"""

from __future__ import annotations

import torch

from tracer.backward import ReplacementBackward
from tracer.models import Transformer
from tracer.record import Record
from transcoders import Transcoder

ROW_DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # --dtype choices; None: the record's own dtype (exact)


def row_backward(model: Transformer, tc: Transcoder, rec: Record, dtype: torch.dtype | None) -> ReplacementBackward:
    """Steps 1-2: the exact backward (dtype None) or the fast one in `dtype`; both reuse one gradient buffer
    (the row phase consumes each batch's gradients before the next)."""
    return ReplacementBackward(model, tc, rec, dtype=dtype, reuse_out=True)
