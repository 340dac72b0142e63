"""NodeLayout's source blocks: the dense rows a batch of targets writes hold exactly the columns it can read."""

from __future__ import annotations

import pytest
import torch

from tracer.layout import NodeKind, NodeLayout


def layout(sorted_features: bool) -> NodeLayout:
    feats = torch.tensor([[0, 0, 4], [1, 0, 2], [0, 1, 7], [1, 2, 1], [0, 2, 3], [1, 3, 5]])
    if not sorted_features:
        feats = feats[[2, 0, 1, 3, 4, 5]]
    return NodeLayout(2, torch.tensor([9, 8, 7, 6]), feats, torch.tensor([3, 5]))


@pytest.mark.parametrize("n_pos", [1, 2, 3, 4])
@pytest.mark.parametrize("sorted_features", [True, False])
def test_source_block_holds_every_readable_column(n_pos, sorted_features):
    """Filled block rows, mapped back through the gap, equal source_rows' dense rows; with position-sorted
    features the block leaves out exactly the features at positions >= n_pos (unsorted: none)."""
    lay = layout(sorted_features)
    block = lay.source_block(n_pos)
    n_feat = lay.count(NodeKind.FEATURE)
    pos = lay.features[:, 1]
    kept = int((pos < n_pos).sum()) if sorted_features else n_feat
    assert (block.n_features, block.gap, block.width) == (kept, n_feat - kept, lay.n_nodes - n_feat + kept)
    g = torch.Generator().manual_seed(n_pos)
    feat = torch.randn(3, n_feat, generator=g) * (pos < n_pos)  # a batch's features past n_pos read nothing
    err = torch.randn(3, 1 + n_pos % 2, n_pos, generator=g)  # a batch may stop below the top layer
    emb = torch.randn(3, n_pos, generator=g)
    out = torch.full((3, block.width), float("nan"))
    out[:, : block.n_features] = feat[:, : block.n_features]
    lay.fill_sources(block, out, err, emb)
    cols = torch.arange(block.width)
    cols[block.n_features :] += block.gap
    want = lay.source_rows(feat, err, emb)
    assert torch.equal(out, want[:, cols])
    assert bool((want[:, block.n_features : block.n_features + block.gap] == 0).all())
