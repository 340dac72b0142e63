"""Automatic supernodes: group a graph's features by similarity and write the groups into its view state.

1. candidates: the pruned graph's feature nodes, grouped only with features at the same token position (a
   supernode is one role at one place in the prompt); features already in a supernode are left alone.
2. similarity of two features: the mean of (a) the cosine of their decoder directions (every output layer
   concatenated, from the transcoders; left out when none are given) and (b) the Jaccard overlap of their
   neighbourhoods in the pruned graph (sources and targets of their edges); 1 when both carry the same non-empty
   label (from the graph, else from the feature store when one is found).
3. group: average-linkage agglomerative clustering per position, merging while the best pair's mean similarity
   is at least `threshold`; groups of one are dropped.
4. write: each group becomes a Supernode labelled with its members' most common label (else "L{lo}-{hi} {token}")
   and its members are pinned, so the viewer shows it; the user can ungroup or regroup as with any supernode.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

import torch

from tracer.layout import NodeKind
from tracer.schema import GraphFile, GraphNode, Supernode

if TYPE_CHECKING:
    from transcoders import Transcoder

log = logging.getLogger("tracer.supernodes")


def _neighbours(graph: GraphFile) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for e in graph.edges:
        out[e.source].add("out:" + e.target)
        out[e.target].add("in:" + e.source)
    return out


def similarity(graph: GraphFile, feats: list[GraphNode], tc: Transcoder | None,
               labels: dict[str, str]) -> torch.Tensor:  # fmt: skip
    """2. [n, n] similarity of the features `feats` of `graph` (float64, diagonal 1)."""
    nb = _neighbours(graph)
    n = len(feats)
    jac = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = nb[feats[i].id], nb[feats[j].id]
            jac[i, j] = jac[j, i] = len(a & b) / len(a | b) if a | b else 0.0
    sim = jac
    if tc is not None:
        dirs = torch.stack([tc.decoder_rows(f.layer, torch.tensor([f.feature])).flatten().double() for f in feats])
        dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-30)
        sim = (jac + dirs @ dirs.T) / 2
    lab = [labels.get(f.id, "") for f in feats]
    for i in range(n):
        for j in range(n):
            if i == j or (lab[i] and lab[i] == lab[j]):
                sim[i, j] = 1.0
    return sim


def cluster(sim: torch.Tensor, threshold: float) -> list[list[int]]:
    """3. Average-linkage agglomerative clustering: merge the most similar pair of clusters while their mean
    pairwise similarity is >= threshold. Returns the clusters (index lists), largest first."""
    groups = [[i] for i in range(sim.shape[0])]
    while len(groups) > 1:
        best, pair = -float("inf"), (0, 0)
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                s = float(sim[groups[a]][:, groups[b]].mean())
                if s > best:
                    best, pair = s, (a, b)
        if best < threshold:
            break
        a, b = pair
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b]
    return sorted(groups, key=lambda g: (-len(g), g))


def _label(members: list[GraphNode], labels: dict[str, str], token: str) -> str:
    common = Counter(labels[m.id] for m in members if labels.get(m.id))
    if common:
        return common.most_common(1)[0][0]
    lo, hi = min(m.layer for m in members), max(m.layer for m in members)
    return f"L{lo}-{hi} {token!r}" if lo != hi else f"L{lo} {token!r}"


def auto_supernodes(graph: GraphFile, tc: Transcoder | None = None, store_labels: dict[str, str] | None = None,
                    threshold: float = 0.5) -> list[Supernode]:  # fmt: skip
    """Steps 1-3: the new supernodes of `graph` (not yet written)."""
    taken = {m for s in graph.view.supernodes for m in s.members}
    labels = dict(store_labels or {}) | {n.id: n.label for n in graph.nodes if n.label} | graph.view.labels
    by_pos: dict[int, list[GraphNode]] = defaultdict(list)
    for n in graph.nodes:
        if n.kind == NodeKind.FEATURE and n.id not in taken:
            by_pos[n.pos].append(n)
    out = []
    for pos in sorted(by_pos):
        feats = by_pos[pos]
        if len(feats) < 2:
            continue
        for g in cluster(similarity(graph, feats, tc, labels), threshold):
            if len(g) > 1:
                members = [feats[i] for i in g]
                token = graph.metadata.tokens[pos] if pos < len(graph.metadata.tokens) else str(pos)
                out.append(Supernode(label=_label(members, labels, token), members=[m.id for m in members]))
    return out


def add_supernodes(graph: GraphFile, groups: list[Supernode]) -> GraphFile:
    """Step 4: a copy of `graph` with the groups in its view state and their members pinned."""
    g = graph.model_copy(deep=True)
    g.view.supernodes = [*g.view.supernodes, *groups]
    pinned = list(g.view.pinned)
    pinned += [m for s in groups for m in s.members if m not in pinned]
    g.view.pinned = pinned
    return g


def store_labels(graph: GraphFile) -> dict[str, str]:
    """Node id -> label from the feature store found for this graph (viewer.features.find_store); {} without."""
    try:
        from viewer.features import find_store

        store = find_store(graph.metadata)
    except Exception as e:  # an optional source: a missing or broken store only loses its labels
        log.info("no feature store labels: %s", e)
        return {}
    if store is None:
        return {}
    keys = {n.id: (n.layer, n.feature) for n in graph.nodes if n.kind == NodeKind.FEATURE and n.feature is not None}
    got = store.labels(set(keys.values()))
    return {nid: got[k] for nid, k in keys.items() if k in got}
