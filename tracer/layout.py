"""NodeLayout: the one object that knows which adjacency row (and column) is which node.

Rows are ordered [features | errors | embeddings | logits]:
1. features in the order given (each a (layer, position, feature index) triple);
2. errors layer-major, one per (layer, position);
3. token embeddings, one per position;
4. logit targets, in the order given (token ids at the last position).
Every other module asks the layout for rows and node attributes; none computes offsets itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import NamedTuple

import torch


class NodeKind(str, Enum):
    FEATURE = "feature"
    ERROR = "error"
    EMBEDDING = "embedding"
    LOGIT = "logit"

    @property
    def code(self) -> int:
        return KIND_ORDER.index(self)


KIND_ORDER = (NodeKind.FEATURE, NodeKind.ERROR, NodeKind.EMBEDDING, NodeKind.LOGIT)


class NodeRef(NamedTuple):
    """One node: its kind, layer (-1 for embeddings, n_layers for logits), position and index
    (feature index for features, token id for embeddings and logits, -1 for errors)."""

    kind: NodeKind
    layer: int
    pos: int
    index: int


class SourceBlock(NamedTuple):
    """Dense rows [B, width] over the sources a batch of targets at positions < n_pos can read: the first
    `n_features` feature columns (every feature at a position < n_pos, when features are sorted by position),
    then every error, embedding and logit column. Block column j is adjacency column j + gap when j >= n_features
    (the features between, at later positions, read no gradient of the batch)."""

    n_features: int
    gap: int
    width: int


@dataclass(frozen=True, eq=False)
class NodeLayout:
    n_layers: int
    tokens: torch.Tensor  # [n_pos] int64 prompt token ids
    features: torch.Tensor  # [n_features, 3] int64 rows of (layer, pos, feature index)
    logit_tokens: torch.Tensor  # [n_logits] int64 token ids of the logit targets

    @property
    def n_pos(self) -> int:
        return int(self.tokens.numel())

    def count(self, kind: NodeKind) -> int:
        return {
            NodeKind.FEATURE: int(self.features.shape[0]),
            NodeKind.ERROR: self.n_layers * self.n_pos,
            NodeKind.EMBEDDING: self.n_pos,
            NodeKind.LOGIT: int(self.logit_tokens.numel()),
        }[kind]

    def rows(self, kind: NodeKind) -> slice:
        """The contiguous block of rows holding every node of one kind."""
        start = sum(self.count(k) for k in KIND_ORDER[: kind.code])
        return slice(start, start + self.count(kind))

    @property
    def n_nodes(self) -> int:
        return sum(self.count(k) for k in KIND_ORDER)

    def feature_rows(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of features, by their index in `features` (all when idx is None)."""
        base = self.rows(NodeKind.FEATURE).start
        n = self.count(NodeKind.FEATURE)
        return base + (torch.arange(n) if idx is None else idx)

    def error_rows(self, layer: torch.Tensor | int, pos: torch.Tensor | int) -> torch.Tensor:
        return self.rows(NodeKind.ERROR).start + torch.as_tensor(layer) * self.n_pos + torch.as_tensor(pos)

    def embedding_rows(self, pos: torch.Tensor | int) -> torch.Tensor:
        return self.rows(NodeKind.EMBEDDING).start + torch.as_tensor(pos)

    def logit_rows(self, k: torch.Tensor | int | None = None) -> torch.Tensor:
        s = self.rows(NodeKind.LOGIT)
        return torch.arange(s.start, s.stop) if k is None else s.start + torch.as_tensor(k)

    def source_rows(self, feature_BN: torch.Tensor, error_BLP: torch.Tensor, embed_BP: torch.Tensor) -> torch.Tensor:
        """Dense adjacency rows [B, n_nodes] from per-kind blocks: features [B, n_features], errors
        [B, L', P'] and embeddings [B, P'] (L' <= n_layers, P' <= n_pos: the missing ones are zero)."""
        B = feature_BN.shape[0]
        out = feature_BN.new_zeros(B, self.n_nodes)
        out[:, self.rows(NodeKind.FEATURE)] = feature_BN
        lp, pp = error_BLP.shape[1], error_BLP.shape[2]
        out[:, self.rows(NodeKind.ERROR)].view(B, self.n_layers, self.n_pos)[:, :lp, :pp] = error_BLP
        out[:, self.rows(NodeKind.EMBEDDING)][:, : embed_BP.shape[1]] = embed_BP
        return out

    def source_block(self, n_pos: int) -> SourceBlock:
        """The columns a batch of targets at positions < n_pos can read (SourceBlock)."""
        n_feat, pos = self.count(NodeKind.FEATURE), self._sorted_positions
        n_feat_read = n_feat if pos is None else int(torch.searchsorted(pos, n_pos))
        return SourceBlock(n_feat_read, n_feat - n_feat_read, self.n_nodes - n_feat + n_feat_read)

    @cached_property
    def _sorted_positions(self) -> torch.Tensor | None:
        """[n_features] the features' positions if ascending (recorded features are), else None (a hand-made
        layout: a source block then keeps every feature column)."""
        pos = self.features.reshape(-1, 3)[:, 1].contiguous()
        return pos if bool((pos.diff() >= 0).all()) else None

    def fill_sources(self, block: SourceBlock, out_BW: torch.Tensor, error_BLP: torch.Tensor,
                     embed_BP: torch.Tensor) -> None:  # fmt: skip
        """Write the columns of `block` after its features into out_BW [B, block.width]: errors [B, L', P'] and
        embeddings [B, P'] (L' <= n_layers, P' <= n_pos: the missing ones, and the logits, are zero)."""
        B, base = out_BW.shape[0], self.rows(NodeKind.ERROR).start  # tail column c - base holds adjacency column c
        tail = out_BW[:, block.n_features :]
        tail.zero_()
        err, emb = self.rows(NodeKind.ERROR), self.rows(NodeKind.EMBEDDING)
        lp, pp = error_BLP.shape[1], error_BLP.shape[2]
        tail[:, err.start - base : err.stop - base].view(B, self.n_layers, self.n_pos)[:, :lp, :pp] = error_BLP
        tail[:, emb.start - base : emb.start - base + embed_BP.shape[1]] = embed_BP

    @cached_property
    def table(self) -> torch.Tensor:
        """[n_nodes, 4] int64 columns (kind code, layer, position, index), in row order."""
        L, P = self.n_layers, self.n_pos
        pos = torch.arange(P)
        f = self.features.reshape(-1, 3)
        feat = torch.stack([torch.full((len(f),), NodeKind.FEATURE.code), f[:, 0], f[:, 1], f[:, 2]], 1)
        err = torch.stack([torch.full((L * P,), NodeKind.ERROR.code), torch.arange(L).repeat_interleave(P),
                           pos.repeat(L), torch.full((L * P,), -1)], 1)  # fmt: skip
        emb = torch.stack([torch.full((P,), NodeKind.EMBEDDING.code), torch.full((P,), -1), pos, self.tokens], 1)
        n = self.logit_tokens.numel()
        lg = torch.stack([torch.full((n,), NodeKind.LOGIT.code), torch.full((n,), L), torch.full((n,), P - 1),
                          self.logit_tokens], 1)  # fmt: skip
        return torch.cat([feat, err, emb, lg]).long()

    def levels(self) -> list[list[tuple[int, int]]]:
        """Topological levels of the rows, as [start, stop) row ranges: logits, then features by layer from the top,
        then errors and embeddings. Every edge goes from a row to a source in a later level (sources sit at lower
        layers), so influence can be pushed level by level (tracer.csr.influence)."""
        from tracer.csr import runs

        t, feat = self.table, self.mask(NodeKind.FEATURE)
        out = [[(self.rows(NodeKind.LOGIT).start, self.rows(NodeKind.LOGIT).stop)]]
        out += [runs(feat & (t[:, 1] == layer)) for layer in range(self.n_layers - 1, -1, -1)]
        return out + [[(self.rows(NodeKind.ERROR).start, self.rows(NodeKind.EMBEDDING).stop)]]

    def max_sources(self) -> torch.Tensor:
        """[n_nodes] int64: how many nodes each row can read (sources at lower layers and positions up to its own:
        features and errors below its layer, embeddings; a logit reads every non-logit). Errors and embeddings
        read nothing. The row builder reserves this much room per row."""
        L, P = self.n_layers, self.n_pos
        out = torch.zeros(self.n_nodes, dtype=torch.long)
        f = self.features.reshape(-1, 3)
        cell = torch.zeros(L + 1, P, dtype=torch.long)  # cell[l, p]: features at layer < l, position <= p
        cell[1:].view(-1).index_add_(0, (f[:, 0] * P + f[:, 1]).long(), torch.ones(len(f), dtype=torch.long))
        cell = cell.cumsum(0).cumsum(1)
        layer, pos = f[:, 0].long(), f[:, 1].long()
        out[self.feature_rows()] = cell[layer, pos] + layer * (pos + 1) + pos + 1
        out[self.logit_rows()] = self.rows(NodeKind.LOGIT).start
        return out

    def kind_codes(self) -> torch.Tensor:
        """[n_nodes] int64 kind code of each row (NodeKind.code)."""
        return self.table[:, 0]

    def mask(self, kind: NodeKind) -> torch.Tensor:
        """[n_nodes] bool: rows of this kind."""
        return self.kind_codes() == kind.code

    def node(self, row: int) -> NodeRef:
        k, layer, pos, index = (int(v) for v in self.table[row])
        return NodeRef(KIND_ORDER[k], layer, pos, index)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """For the safetensors sidecar (see from_tensors)."""
        return {"layout.tokens": self.tokens, "layout.features": self.features.reshape(-1, 3),
                "layout.logit_tokens": self.logit_tokens, "layout.n_layers": torch.tensor([self.n_layers])}  # fmt: skip

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> NodeLayout:
        return cls(int(t["layout.n_layers"][0]), t["layout.tokens"].long(), t["layout.features"].long(),
                   t["layout.logit_tokens"].long())  # fmt: skip
