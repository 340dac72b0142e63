"""The sidecar's contents: the unpruned Attribution as safetensors tensors plus string metadata, and back.
(tracer.graphfile owns the file itself: where it lives, its content hash, the atomic pair write.)

Format v2 (`format` = "clt-tracer adjacency v2"):
- `adjacency.crow` [n+1] int64 row pointers, `adjacency.col` [nnz] int32 source columns, `adjacency.values` [nnz]
  float32 or float16 (metadata `values_dtype`): the CSR of A[target, source] (tracer.csr); 8 bytes per edge in
  float32, 6 in float16;
- NodeLayout.to_tensors(), `activations` [n_features], `logit_probs` [n_logits], `error_norms` [n_layers, n_pos],
  optional `row_mass_kept` [n_nodes];
- metadata `format`, `values_dtype`, and JSON-encoded `token_strs`, `logit_strs`, `timings`, `stats`.
Format v1 ("clt-tracer adjacency v1"): COO `adjacency.indices` [2, nnz] int64, `adjacency.values`, `adjacency.shape`
[2]; still read, and migrated to CSR in memory.

Reading (lazy): safe_open memory-maps the file, so the edge arrays stay file-backed and pages are read as the
passes of tracer.csr touch them. Before anything is built, in this order, with nothing allocated from a size the
file claims: 1. the required tensors and the format tag exist; 2. the layout tensors agree with each other (n_layers
x n_pos = error_norms' entries); 3. n = the layout's node count; crow has n + 1 entries, starts at 0, never decreases
and ends at len(col) = len(values); 4. every column lies in [0, n) (one chunked pass). Any failure is one
GraphFileError line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tracer.csr import CHUNK_ENTRIES, CsrAdjacency
from tracer.errors import GraphFileError
from tracer.layout import NodeKind, NodeLayout
from tracer.result import Attribution

FORMAT_V1 = "clt-tracer adjacency v1"
FORMAT_V2 = "clt-tracer adjacency v2"
FORMAT = FORMAT_V2
VALUE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}  # --sidecar-dtype choices
COMMON = ("activations", "logit_probs", "error_norms", "layout.tokens", "layout.features", "layout.logit_tokens",
          "layout.n_layers")  # fmt: skip
REQUIRED = {FORMAT_V1: ("adjacency.indices", "adjacency.values", "adjacency.shape", *COMMON),
            FORMAT_V2: ("adjacency.crow", "adjacency.col", "adjacency.values", *COMMON)}  # fmt: skip
FINITE = ("adjacency.values", "activations", "logit_probs", "error_norms", "row_mass_kept")


def sidecar_tensors(a: Attribution, values_dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor],
                                                                                       dict[str, str]]:  # fmt: skip
    """(tensors, metadata) of the v2 sidecar of `a`; values stored as values_dtype (float32 or float16; None: as
    they are when float16, e.g. re-saved from an fp16 sidecar, else float32)."""
    if values_dtype is None:
        values_dtype = torch.float16 if a.adjacency.values.dtype == torch.float16 else torch.float32
    if values_dtype not in VALUE_DTYPES.values():
        raise ValueError(f"sidecar values must be float32 or float16, not {values_dtype}")
    adj = a.adjacency
    tensors = {
        "adjacency.crow": adj.crow.long(), "adjacency.col": adj.col.to(torch.int32),
        "adjacency.values": adj.values.to(values_dtype), "activations": a.activations, "logit_probs": a.logit_probs,
        "error_norms": a.error_norms, **a.layout.to_tensors(),
    }  # fmt: skip
    if a.row_mass_kept is not None:
        tensors["row_mass_kept"] = a.row_mass_kept
    meta = {"format": FORMAT, "values_dtype": str(values_dtype).removeprefix("torch."),
            "token_strs": json.dumps(a.token_strs), "logit_strs": json.dumps(a.logit_strs),
            "timings": json.dumps(a.timings), "stats": json.dumps(a.stats)}  # fmt: skip
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, meta


def read_attribution(side: Path, t: dict[str, torch.Tensor], meta: dict[str, str]) -> Attribution:
    """The Attribution of a sidecar's tensors (memory-mapped by safe_open) and metadata, v1 or v2 (module
    docstring, reading steps 1-4)."""
    fmt = meta.get("format")
    missing = [k for k in REQUIRED.get(fmt or "", REQUIRED[FORMAT]) if k not in t]
    if fmt not in REQUIRED or missing:
        raise GraphFileError(f"{side} is not a clt-tracer adjacency sidecar (missing {missing or 'format tag'})")
    try:
        layout = _layout(side, t)
        n = layout.n_nodes
        adjacency = _csr_v2(side, t, n) if fmt == FORMAT_V2 else _csr_v1(side, t, n)
        token_strs, logit_strs = json.loads(meta["token_strs"]), json.loads(meta["logit_strs"])
        timings, stats = json.loads(meta.get("timings", "{}")), json.loads(meta.get("stats", "{}"))
        if not (_is_str_list(token_strs) and _is_str_list(logit_strs) and isinstance(timings, dict)
                and isinstance(stats, dict)):  # fmt: skip
            raise GraphFileError(f"{side}: metadata token_strs/logit_strs/timings/stats have the wrong type")
        a = Attribution(
            layout=layout, adjacency=adjacency,
            activations=t["activations"], logit_probs=t["logit_probs"], error_norms=t["error_norms"],
            token_strs=token_strs, logit_strs=logit_strs, timings=timings, stats=stats,
            row_mass_kept=t.get("row_mass_kept"),
        )  # fmt: skip
    except (KeyError, ValueError, IndexError, RuntimeError, TypeError, RecursionError) as e:
        raise GraphFileError(f"{side} is inconsistent: {str(e).splitlines()[0] if str(e) else e}") from None
    counts = ((len(a.activations), layout.count(NodeKind.FEATURE), "activations"),
              (len(a.logit_probs), layout.count(NodeKind.LOGIT), "logit_probs"),
              (len(a.token_strs), layout.n_pos, "token_strs"), (len(a.logit_strs), layout.count(NodeKind.LOGIT),
              "logit_strs"), (a.error_norms.numel(), layout.count(NodeKind.ERROR), "error_norms"),
              (n if a.row_mass_kept is None else a.row_mass_kept.numel(), n, "row_mass_kept"))  # fmt: skip
    for got, want, name in counts:
        if got != want:
            raise GraphFileError(f"{side}: {name} has {got} entries, the layout needs {want}")
    return a


def _layout(side: Path, t: dict[str, torch.Tensor]) -> NodeLayout:
    """Step 2: a layout whose sizes are backed by tensors actually in the file."""
    n_layers, feats = t["layout.n_layers"], t["layout.features"]
    if n_layers.numel() != 1 or feats.dim() != 2 or feats.shape[1] != 3 or t["layout.tokens"].dim() != 1:
        raise GraphFileError(f"{side}: layout tensors have the wrong shapes")
    if int(n_layers[0]) < 1 or int(n_layers[0]) * t["layout.tokens"].numel() != t["error_norms"].numel():
        raise GraphFileError(f"{side}: layout.n_layers x tokens does not match error_norms")
    return NodeLayout.from_tensors(t)


def _csr_v2(side: Path, t: dict[str, torch.Tensor], n: int) -> CsrAdjacency:
    """Step 3-4 for v2: the arrays stay memory-mapped."""
    crow, col, vals = t["adjacency.crow"], t["adjacency.col"], t["adjacency.values"]
    if crow.dtype != torch.int64 or col.dtype != torch.int32 or vals.dtype not in VALUE_DTYPES.values():
        raise GraphFileError(f"{side}: adjacency arrays have the wrong dtypes ({crow.dtype}, {col.dtype}, "
                             f"{vals.dtype})")  # fmt: skip
    if crow.shape != (n + 1,) or col.dim() != 1 or vals.shape != col.shape:
        raise GraphFileError(f"{side}: adjacency shape does not match the {n}-node layout")
    if int(crow[0]) != 0 or int(crow[-1]) != col.numel() or bool((crow.diff() < 0).any()):
        raise GraphFileError(f"{side}: adjacency row pointers are not a valid CSR of {col.numel()} entries")
    for start in range(0, col.numel(), CHUNK_ENTRIES):
        part = col[start : start + CHUNK_ENTRIES]
        if int(part.min()) < 0 or int(part.max()) >= n:
            raise GraphFileError(f"{side}: adjacency column indices out of range for the {n}-node layout")
    return CsrAdjacency(crow, col, vals)


def _csr_v1(side: Path, t: dict[str, torch.Tensor], n: int) -> CsrAdjacency:
    """Steps 3-4 for v1 (COO): checked, then converted to CSR in memory (old sidecars are small)."""
    idx, vals = t["adjacency.indices"], t["adjacency.values"]
    shape = tuple(t["adjacency.shape"].tolist())
    bad = idx.dim() != 2 or idx.shape[0] != 2 or vals.shape != idx.shape[1:]
    if shape != (n, n) or bad or (idx.numel() > 0 and not 0 <= int(idx.min()) <= int(idx.max()) < n):
        raise GraphFileError(f"{side}: adjacency shape/indices do not match the {n}-node layout")
    coo = torch.sparse_coo_tensor(idx.long(), vals, (n, n), check_invariants=False).coalesce()
    return CsrAdjacency.of(coo)


def _is_str_list(x: object) -> bool:
    return isinstance(x, list) and all(isinstance(s, str) for s in x)
