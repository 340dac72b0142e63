"""The bf16 fast path of the row phase (`tracer trace --dtype bf16`).

CPUs with AVX512-BF16 or AMX multiply bf16 matrices several times faster than fp32 (oneDNN accumulates each
product in fp32 and rounds the result to bf16). The fast path runs the rows' linear maps in bf16:
1. shadow: a copy of the model's attention and norms in bf16 (embeddings, unembedding and MLPs are shared, not
   copied: the backward never reads them) and the recorded patterns and norm scales in bf16;
2. rows: tracer.backward.ReplacementBackward on the shadow in bf16 (most of the row phase's work); its gradients
   stay bf16 for the edge kernel and the error and token dot products (tracer.attribute.RowBuilder, whose decoder
   rows, errors and embeddings are bf16 copies): widening them to fp32 cost as much as the kernel itself;
3. everything else stays fp32: the recorded forward pass, the stored edges (widened as each row is stored),
   assembly, pruning and the replacement check. fp32 stays the default and exact.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from tracer.backward import ReplacementBackward
from tracer.models import Transformer
from tracer.record import Record
from transcoders import Transcoder

ROW_DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # --dtype choices; None: the record's own dtype (exact)


def shadow_model(model: Transformer, dtype: torch.dtype) -> Transformer:
    """Step 1: the model with its attention and norms copied in `dtype`; big parts shared (read-only)."""
    shared = [model.embed, model.unembed, getattr(model, "pos_embed", None), *(b.mlp for b in model.blocks)]
    memo = {id(m): m for m in shared if m is not None}
    shadow = copy.deepcopy(model, memo)
    for block in shadow.blocks:
        for name, child in block.named_children():
            if name != "mlp":
                child.to(dtype)
    shadow.ln_f.to(dtype)
    return shadow


def shadow_record(rec: Record, dtype: torch.dtype) -> Record:
    """Step 1: the record with the tensors the backward reads (patterns, norm scales) in `dtype`."""
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return replace(rec, patterns=[p.to(dtype) for p in rec.patterns], ln1_scale=cast(rec.ln1_scale),
                   ln2_scale=cast(rec.ln2_scale), lnf_scale=cast(rec.lnf_scale),
                   attn_post_scale=cast(rec.attn_post_scale))  # fmt: skip


def row_backward(model: Transformer, tc: Transcoder, rec: Record, dtype: torch.dtype | None) -> ReplacementBackward:
    """Step 2: the exact backward (dtype None) or its fast shadow in `dtype`; both reuse one gradient buffer
    (the row phase consumes each batch's gradients before the next)."""
    if dtype is None:
        return ReplacementBackward(model, tc, rec, reuse_out=True)
    return ReplacementBackward(
        shadow_model(model, dtype),
        tc,
        shadow_record(rec, dtype),
        dtype=dtype,
        reuse_out=True,
    )
