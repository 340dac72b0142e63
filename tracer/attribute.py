"""Attribution: from a prompt to the unpruned sparse graph of direct effects in the local replacement model.

1. record: one forward pass; transcoder activations, error vectors, frozen patterns and norm scales.
2. targets: logit targets (top tokens by probability, or custom ones) as demeaned unembedding directions.
3. plan: gather the active features' decoder rows (scaled by activations) for the edge kernel, once.
4. logit_rows: one batched exact backward (tracer.backward) for the logit targets -> their rows.
5. feature_rows: features as targets (encoder row at their layer and position), in batches sorted by position
   (a batch is cut after its last target's position and above its highest layer). With --max-feature-nodes below
   the number of active features, the next batch is the most influential unvisited features so far, re-ranked
   every `update_interval` batches. A batch's dense rows span only the columns it can read (NodeLayout.source_block:
   the features at its positions, then errors, embeddings, logits); the edge kernel writes straight into them.
6. assemble: the CSR adjacency (tracer.csr): each row's non-zeros (or its K largest with --edge-topk) were written
   to the row's slot as its batch finished; assembling closes the gaps in place.
7. check: the replacement model (frozen patterns and scales, features + skip + errors) reproduces the logits.
Each row's entries: features via the kernel (a_s * sum_l' <W_dec[s, l'], d t / d mlp_out_l'[p_s]>), errors
<eps_{l,p}, d t / d mlp_out_l[p]>, tokens <W_E[tok_p], d t / d embed[p]>.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from kernels import plan_edges
from tracer.backward import Injections
from tracer.csr import CsrAdjacency, RowStore
from tracer.errors import ConfigError
from tracer.fast import ROW_DTYPES, row_backward
from tracer.layout import NodeLayout
from tracer.models import Tokenizer, Transformer
from tracer.prune import node_influence
from tracer.record import Record, frozen_forward, record
from tracer.result import Attribution
from tracer.targets import LogitTargets, select_targets
from transcoders import Transcoder

log = logging.getLogger("tracer.attribute")


@dataclass(frozen=True)
class TraceConfig:
    """Settings of one trace (each documented once; the CLI's help text repeats these)."""

    max_n_logits: int = 10  # most logit targets
    desired_logit_prob: float = 0.95  # stop adding logit targets once their probability mass reaches this
    batch_size: int = 128  # targets per backward pass
    max_feature_nodes: int | None = None  # features that get rows (None: every active feature)
    update_interval: int = 4  # batches between influence re-rankings (only with max_feature_nodes)
    edge_topk: int | None = None  # keep each row's K largest |edges| (None: exact, all kept)
    target: tuple[str, ...] = ()  # custom logit targets (single tokens)
    minus: str | None = None  # with one target: attribute the logit difference target - minus
    kernel: str | None = None  # edge kernel backend (auto|torch|triton; env TRACER_KERNEL)
    row_dtype: str = "fp32"  # rows in fp32 (exact) or bf16 (tracer.fast: faster, edges to ~1% relative)
    progress: bool = False  # tqdm bars per phase

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_n_logits", "update_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.desired_logit_prob <= 1:
            raise ConfigError("desired_logit_prob must be in (0, 1]")
        if self.edge_topk is not None and self.edge_topk < 1:
            raise ConfigError("edge_topk must be >= 1")
        if self.max_feature_nodes is not None and self.max_feature_nodes < 0:
            raise ConfigError("max_feature_nodes must be >= 0")
        if self.row_dtype not in ROW_DTYPES:
            raise ConfigError(f"row dtype must be one of {', '.join(ROW_DTYPES)}, got {self.row_dtype!r}")


@contextmanager
def phase(name: str, timings: dict[str, float]) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
    log.info("%s: %.3f s", name, timings[name])


class RowBuilder:
    """Turns batches of targets into sparse rows (step 4-6 of the module docstring)."""

    def __init__(self, model: Transformer, tc: Transcoder, rec: Record, layout: NodeLayout, cfg: TraceConfig):
        fast = ROW_DTYPES[cfg.row_dtype]
        self.backward = row_backward(model, tc, rec, fast)
        rdt = fast or rec.mlp_out.dtype  # the gradients' dtype: the kernel, errors and embeddings match it
        self.layout, self.cfg = layout, cfg
        feats = rec.features
        dec = torch.zeros(len(feats), model.cfg.n_layers, model.cfg.d_model, dtype=rdt)
        for layer in feats[:, 0].unique().tolist():
            sel = (feats[:, 0] == layer).nonzero()[:, 0]
            dec[sel] = tc.decoder_rows(layer, feats[sel, 2]).to(dec.dtype)
        act = rec.acts[feats[:, 1], feats[:, 0], feats[:, 2]].to(rdt)
        self.plan = plan_edges(dec, feats[:, 0], feats[:, 1], act, backend=cfg.kernel)
        errors = rec.errors.clone()
        errors[0] = 0  # BOS errors are constants, not nodes
        self._error_norms = errors.norm(dim=-1).T  # from the record's (exact) errors, not the bf16 copy
        self.errors_PLD = errors.to(rdt)
        self.embed_PD = model.embed_tokens(rec.tokens).to(dec.dtype)  # scaled for Gemma
        room = layout.max_sources() if cfg.edge_topk is None else layout.max_sources().clamp_max(cfg.edge_topk)
        budget = None  # with fewer feature rows than features, slots go to rows as they come
        if cfg.max_feature_nodes is not None and cfg.max_feature_nodes < len(feats):
            budget = cfg.max_feature_nodes + int(layout.logit_rows().numel())
        self.store = RowStore(room, rec.mlp_out.dtype, budget)
        self.mass: list[torch.Tensor] = []
        self.target_rows: list[torch.Tensor] = []
        self.flops = 0  # useful matmul work of all batches, for benchmarks
        self._layer_N, self._pos_N = feats[:, 0], feats[:, 1]
        self._rows_buf = torch.empty(0, dtype=rdt)  # dense rows of a batch (tracer.layout.SourceBlock)

    def add(self, inj: Injections, target_rows: torch.Tensor) -> None:
        g = self.backward.run(inj)
        B, P, Lp, D = g.mlp_out_BPLD.shape
        block = self.layout.source_block(P)  # the columns these targets can read
        if self._rows_buf.numel() < B * block.width:  # reused: every column is written each batch
            self._rows_buf = self._rows_buf.new_empty(B * self.layout.source_block(self.layout.n_pos).width)
        dense = self._rows_buf[: B * block.width].view(B, block.width)
        self.plan.attribute(g.mlp_out_BPLD.transpose(1, 2), dense[:, : block.n_features])
        err = error_edges(g.mlp_out_BPLD, self.errors_PLD[:P, :Lp])
        emb = torch.einsum("bpd,pd->bp", g.embed_BPD, self.embed_PD[:P])
        self.layout.fill_sources(block, dense, err, emb)
        reach = (Lp - self._layer_N[self._pos_N < P]).clamp_min(0).sum()
        self.flops += 2 * B * D * (int(reach) + P * Lp + P)  # kernel, error and token edges
        if self.cfg.edge_topk is not None:
            top = dense.abs().topk(min(self.cfg.edge_topk, dense.shape[1]), dim=1)
            acc = torch.promote_types(dense.dtype, torch.float32)  # bf16 rows: sums in fp32
            total = dense.abs().sum(1, dtype=acc).clamp_min(1e-30)
            self.mass.append(top.values.sum(1, dtype=acc) / total)
            kept = torch.zeros_like(dense).scatter_(1, top.indices, dense.gather(1, top.indices))
            dense = kept
        self.store.put(target_rows, dense, block.n_features, block.gap)
        self.target_rows.append(target_rows)

    def adjacency(self, final: bool = False) -> CsrAdjacency:
        """The rows built so far as CSR [n_nodes, n_nodes]; `final` compacts in place (no more rows after it)."""
        return self.store.finish() if final else self.store.snapshot()

    def error_norms(self) -> torch.Tensor:
        """[n_layers, n_pos] L2 norm of each error node's vector (0 at BOS), in the record's dtype."""
        return self._error_norms

    def row_mass(self) -> torch.Tensor | None:
        if not self.mass:
            return None
        out = torch.ones(self.layout.n_nodes, dtype=torch.float64)
        out[torch.cat(self.target_rows)] = torch.cat(self.mass).double()
        return out


def error_edges(grads_BPLD: torch.Tensor, errors_PLD: torch.Tensor) -> torch.Tensor:
    """[B, L, P] dot products <grads[b, p, l], errors[p, l]>: per layer, one batched matrix-vector product over
    positions that reads the gradients in place (an einsum copied them to a (p, l)-major layout first: 2x slower)."""
    B, P, L, D = grads_BPLD.shape
    out_LPB = grads_BPLD.new_empty(L, P, B, 1)
    for layer in range(L):
        torch.bmm(grads_BPLD[:, :, layer].transpose(0, 1), errors_PLD[:, layer, :, None], out=out_LPB[layer])
    return out_LPB[..., 0].permute(2, 0, 1)


def _feature_batches(order: torch.Tensor, feats: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    """Split feature indices into batches sorted by (layer, position): a batch's backward pass starts at its
    layer and is cut after its last position, and its cost grows with both."""
    n_pos = int(feats[:, 1].max()) + 1 if len(feats) else 1
    key = feats[order, 0] * n_pos + feats[order, 1]
    yield from order[key.argsort(stable=True)].split(size)


def _feature_injections(tc: Transcoder, feats: torch.Tensor, idx: torch.Tensor) -> Injections:
    f = feats[idx]
    return Injections(f[:, 0], f[:, 1], tc.W_enc[f[:, 0], f[:, 2]].detach())


def _choose_features(builder: RowBuilder, layout: NodeLayout, weights: torch.Tensor, visited: torch.Tensor,
                     n: int) -> torch.Tensor:  # fmt: skip
    """The n unvisited features of highest influence on the logits through the rows built so far."""
    infl = node_influence(builder.adjacency(), weights, layout)[layout.feature_rows()]
    infl[visited] = -1.0
    return infl.topk(min(n, int((~visited).sum()))).indices


def attribute(
    model: Transformer, tc: Transcoder, tokens: torch.Tensor, tok: Tokenizer | None, cfg: TraceConfig | None = None
) -> Attribution:
    """tokens [P] (BOS first) -> the unpruned Attribution (see module docstring for the phases)."""
    cfg = cfg or TraceConfig()
    t: dict[str, float] = {}
    with phase("record", t):
        rec = record(model, tc, tokens).upcast()  # a bf16/fp16 model: attribution in fp32
    with phase("targets", t):
        targets: LogitTargets = select_targets(rec.logits[-1], model.unembed.weight, tok, cfg.max_n_logits,
                                               cfg.desired_logit_prob, list(cfg.target), cfg.minus)  # fmt: skip
        layout = NodeLayout(model.cfg.n_layers, tokens, rec.features, targets.token_ids)
    with phase("plan", t):
        builder = RowBuilder(model, tc, rec, layout, cfg)
    with phase("logit_rows", t):
        K, P = len(targets.token_ids), rec.n_pos
        inj = Injections(torch.full((K,), model.cfg.n_layers), torch.full((K,), P - 1), targets.directions)
        builder.add(inj, layout.logit_rows())
    with phase("feature_rows", t):
        _feature_rows(builder, tc, rec, layout, targets, cfg)
    with phase("assemble", t):
        adjacency = builder.adjacency(final=True)
    with phase("check", t):
        check = replacement_logit_error(model, tc, rec)
    names = tok.token_str if tok is not None else (lambda i: f"#{i}")
    return Attribution(
        layout=layout, adjacency=adjacency, activations=rec.acts[rec.features[:, 1], rec.features[:, 0],
        rec.features[:, 2]], logit_probs=targets.weights, error_norms=builder.error_norms(),
        token_strs=[names(int(i)) for i in tokens], logit_strs=targets.labels, timings=t,
        stats={"replacement_max_abs_logit_error": check, "rows_gflop": (builder.flops + builder.backward.flops) / 1e9},
        row_mass_kept=builder.row_mass(),
    )  # fmt: skip


def _feature_rows(builder: RowBuilder, tc: Transcoder, rec: Record, layout: NodeLayout, targets: LogitTargets,
                  cfg: TraceConfig) -> None:  # fmt: skip
    feats = rec.features
    n_max = len(feats) if cfg.max_feature_nodes is None else min(cfg.max_feature_nodes, len(feats))
    bar = tqdm(total=n_max, desc="feature rows", unit="row", disable=not cfg.progress)
    if n_max == len(feats):  # every feature gets a row: order only matters for speed
        chunks: Iterator[torch.Tensor] = iter([torch.arange(len(feats))])
    else:
        weights = torch.zeros(layout.n_nodes, dtype=torch.float64)
        weights[layout.logit_rows()] = targets.weights.double()
        visited = torch.zeros(len(feats), dtype=torch.bool)

        def ranked() -> Iterator[torch.Tensor]:
            done = 0
            while done < n_max:
                pick = _choose_features(builder, layout, weights, visited, min(cfg.batch_size * cfg.update_interval,
                                                                              n_max - done))  # fmt: skip
                visited[pick] = True
                done += len(pick)
                yield pick

        chunks = ranked()
    for chunk in chunks:
        for idx in _feature_batches(chunk, feats, cfg.batch_size):
            builder.add(_feature_injections(tc, feats, idx), layout.feature_rows(idx))
            bar.update(len(idx))
    bar.close()


@torch.no_grad()
def replacement_logit_error(model: Transformer, tc: Transcoder, rec: Record) -> float:
    """Max |logit difference| between the local replacement model and the original forward pass."""
    with frozen_forward(model, tc, rec, rec.acts, rec.errors):
        logits = model(rec.tokens[None])[0]
    return float((logits - rec.logits).abs().max())
