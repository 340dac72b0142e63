"""Comparing graphs: the diff of two graphs, and the circuit common to many.

Node identity across prompts (a `key`): a feature by (layer, feature index, position), an error node by (layer,
position), an embedding by (token, position), a logit by its token. Positions are counted from the end of the
prompt (`align="end"`: -1 is the last token, where the logits are read) or from its start (`align="start"`).
Edges are identified by their (source key, target key).

diff(A, B):
1. check: both graphs come from the same model and transcoders (else ConfigError: feature ids would not match).
2. match: nodes and edges by key; for each, its influence (nodes; a logit's probability) or weight (edges) in A
   and in B (None if absent).
3. rank: shared items by |change|, items of one graph only by their size there.

common(graphs, min_share):
1. check: one model and transcoder set for every graph.
2. count: per feature key (position-free with `any_position`), the graphs whose pruned graph holds it, and its
   mean influence over them; keep keys present in at least min_share of the graphs, with the logits and
   embeddings that are as common, and the edges between kept nodes present in as many graphs (mean weight).
3. build: a GraphFile (no sidecar) whose token columns are the aligned positions, labelled with the most common
   token there; each node's label says in how many prompts it appears.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from pydantic import BaseModel

from tracer.errors import ConfigError
from tracer.layout import NodeKind
from tracer.schema import GraphEdge, GraphFile, GraphNode, Metadata, Scores

ALIGNS = ("end", "start")
STABLE = 0.25  # a shared node whose influence changed by at most this share counts as stable in the summary


def node_key(n: GraphNode, n_pos: int, align: str = "end", any_position: bool = False) -> str:
    """The identity of a node across prompts (module docstring)."""
    rel = n.pos - n_pos if align == "end" else n.pos
    at = "" if any_position else f"@{rel}"
    if n.kind == NodeKind.FEATURE:
        return f"F{n.layer}.{n.feature}{at}"
    if n.kind == NodeKind.ERROR:
        return f"ERR{n.layer}{at}"
    if n.kind == NodeKind.EMBEDDING:
        return f"EMB{n.token_id}{at}"
    return f"LOGIT{n.token_id}"


def check_same_model(graphs: Sequence[tuple[str, GraphFile]]) -> None:
    """ConfigError unless every graph comes from one model and one transcoder set."""
    (name0, g0), *rest = graphs
    for name, g in rest:
        for what in ("model", "transcoders"):
            a, b = getattr(g0.metadata, what), getattr(g.metadata, what)
            if a.content_hash != b.content_hash:
                raise ConfigError(f"{name0} and {name} come from different {what} ({a.name} {a.content_hash} "
                                  f"vs {b.name} {b.content_hash}); compare graphs of one model and transcoder "
                                  "set")  # fmt: skip


# diff


def _value(n: GraphNode) -> float:
    """What a node's change is measured by: a logit's probability, any other node's influence."""
    return n.probability or 0.0 if n.kind == NodeKind.LOGIT else n.influence


class NodeChange(BaseModel):
    key: str
    kind: NodeKind
    a: float | None  # influence in A, probability for logits (None: not in A's pruned graph)
    b: float | None
    label: str = ""

    @property
    def delta(self) -> float:
        return (self.b or 0.0) - (self.a or 0.0)


class EdgeChange(BaseModel):
    source: str
    target: str
    a: float | None  # weight in A
    b: float | None

    @property
    def delta(self) -> float:
        return (self.b or 0.0) - (self.a or 0.0)


class GraphDiff(BaseModel):
    a_prompt: str
    b_prompt: str
    align: str
    nodes: list[NodeChange]  # shared by |Δ| (largest first), then A only, then B only (each by size)
    edges: list[EdgeChange]

    def only(self, side: str) -> list[NodeChange]:
        return [n for n in self.nodes if (n.a is None) == (side == "b") and (n.b is None) == (side == "a")]

    def shared(self) -> list[NodeChange]:
        return [n for n in self.nodes if n.a is not None and n.b is not None]


class Keyed(NamedTuple):
    nodes: dict[str, GraphNode]  # key -> node
    key_of: dict[str, str]  # node id -> key
    edges: dict[tuple[str, str], float]  # (source key, target key) -> weight


def keyed(g: GraphFile, align: str = "end", any_position: bool = False) -> Keyed:
    """A graph's nodes and edges by key; keys that collide (any_position) keep the most influential node and sum
    their edges."""
    n_pos = len(g.metadata.tokens)
    nodes: dict[str, GraphNode] = {}
    key_of = {}
    for n in g.nodes:
        k = key_of[n.id] = node_key(n, n_pos, align, any_position)
        if k not in nodes or n.influence > nodes[k].influence:
            nodes[k] = n
    edges: dict[tuple[str, str], float] = defaultdict(float)
    for e in g.edges:
        edges[key_of[e.source], key_of[e.target]] += e.weight
    return Keyed(nodes, key_of, dict(edges))


def diff(a: GraphFile, b: GraphFile, align: str = "end", names: tuple[str, str] = ("A", "B")) -> GraphDiff:
    """Steps 1-3 of diff in the module docstring."""
    check_same_model([(names[0], a), (names[1], b)])  # 1.
    ka, kb = keyed(a, align), keyed(b, align)
    nodes = [NodeChange(key=k, kind=(ka.nodes.get(k) or kb.nodes[k]).kind,  # 2.
                        a=_value(ka.nodes[k]) if k in ka.nodes else None,
                        b=_value(kb.nodes[k]) if k in kb.nodes else None,
                        label=_name(ka.nodes.get(k) or kb.nodes[k]))
             for k in ka.nodes.keys() | kb.nodes.keys()]  # fmt: skip
    edges = [EdgeChange(source=s, target=t, a=ka.edges.get((s, t)), b=kb.edges.get((s, t)))
             for s, t in ka.edges.keys() | kb.edges.keys()]  # fmt: skip

    def order(x: NodeChange | EdgeChange) -> tuple:  # 3.
        group = 0 if x.a is not None and x.b is not None else (1 if x.b is None else 2)
        size = abs(x.delta) if group == 0 else abs(x.a if x.a is not None else x.b or 0.0)
        return group, -size, getattr(x, "key", "") or (getattr(x, "source", ""), getattr(x, "target", ""))

    return GraphDiff(a_prompt=a.metadata.prompt, b_prompt=b.metadata.prompt, align=align,
                     nodes=sorted(nodes, key=order), edges=sorted(edges, key=order))  # fmt: skip


def _name(n: GraphNode) -> str:
    return n.label or (repr(n.token) if n.token is not None else "")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def format_diff(d: GraphDiff, top: int = 10) -> str:
    """The text summary: counts, then the largest changes of each group."""
    shared, only_a, only_b = d.shared(), d.only("a"), d.only("b")
    e_shared = [e for e in d.edges if e.a is not None and e.b is not None]
    lines = [f"A: {d.a_prompt!r}", f"B: {d.b_prompt!r}",
             f"nodes: {len(shared)} shared, {len(only_a)} only in A, {len(only_b)} only in B "
             f"(positions aligned at the {d.align})",
             f"edges: {len(e_shared)} shared, {sum(e.b is None for e in d.edges)} only in A, "
             f"{sum(e.a is None for e in d.edges)} only in B"]  # fmt: skip
    stable = sorted((n for n in shared if abs(n.delta) <= STABLE * max(abs(n.a or 0), abs(n.b or 0))),
                    key=lambda n: -min(abs(n.a or 0), abs(n.b or 0)))  # fmt: skip
    for title, items in (("only in A (influence in A; logits: probability)", only_a),
                         ("only in B (influence in B; logits: probability)", only_b),
                         ("shared, largest influence change (A -> B)", shared),
                         (f"shared and stable (change within {STABLE:.0%}), most influential", stable)):  # fmt: skip
        lines.append(f"{title}:")
        lines += [f"  {n.key:<24} {_fmt(n.a):>8} -> {_fmt(n.b):<8} {n.label}".rstrip() for n in items[:top]]
    lines.append("shared edges, largest weight change (A -> B):")
    lines += [f"  {e.source} -> {e.target}: {_fmt(e.a)} -> {_fmt(e.b)}" for e in e_shared[:top]]
    return "\n".join(lines)


# common


class CommonResult(NamedTuple):
    graph: GraphFile
    n_graphs: int
    n_features: int


def common(graphs: Sequence[tuple[str, GraphFile]], min_share: float = 0.5, align: str = "end",
           any_position: bool = False) -> CommonResult:  # fmt: skip
    """Steps 1-3 of common in the module docstring."""
    if not graphs:
        raise ConfigError("no graphs to compare")
    if not 0 < min_share <= 1:
        raise ConfigError(f"--min-share must be in (0, 1], got {min_share}")
    check_same_model(graphs)  # 1.
    keys = [keyed(g, align, any_position) for _, g in graphs]
    n = len(graphs)
    need = max(1, -(-round(min_share * n * 1e9) // 10**9))  # ceil(min_share * n) without float fuzz
    count: Counter[str] = Counter(k for kd in keys for k in kd.nodes)  # 2.
    kept = {k for k, c in count.items() if c >= need and not k.startswith("ERR")}
    ecount: Counter[tuple[str, str]] = Counter(e for kd in keys for e in kd.edges if set(e) <= kept)
    return CommonResult(_build(graphs, keys, kept, ecount, need, align), n, sum(k.startswith("F") for k in kept))


def _columns(graphs: Sequence[tuple[str, GraphFile]], align: str) -> tuple[list[int], list[str]]:
    """The aligned positions any graph has, and the most common token at each."""
    tokens: dict[int, Counter[str]] = defaultdict(Counter)
    for _, g in graphs:
        toks = g.metadata.tokens
        for p, t in enumerate(toks):
            tokens[p - len(toks) if align == "end" else p][t] += 1
    rels = sorted(tokens)
    return rels, [tokens[r].most_common(1)[0][0] for r in rels]


def _build(graphs, keys: list[Keyed], kept: set[str], ecount: Counter, need: int, align: str) -> GraphFile:
    """3. The common circuit as a GraphFile."""
    rels, tokens = _columns(graphs, align)
    col = {r: i for i, r in enumerate(rels)}
    n = len(graphs)
    nodes = []
    for k in sorted(kept):
        present = [kd.nodes[k] for kd in keys if k in kd.nodes]
        first, g0 = present[0], next(g for (_, g), kd in zip(graphs, keys, strict=True) if k in kd.nodes)
        rel = first.pos - len(g0.metadata.tokens) if align == "end" else first.pos
        pos = len(rels) - 1 if first.kind == NodeKind.LOGIT else col[rel]
        mean = lambda vals: sum(vals) / len(vals)  # noqa: E731
        probs = [p.probability for p in present if p.probability is not None]
        nodes.append(GraphNode(id=k, kind=first.kind, layer=first.layer, pos=pos, feature=first.feature,
                               token_id=first.token_id, token=first.token, probability=mean(probs) if probs else None,
                               activation=mean([p.activation or 0.0 for p in present]),
                               influence=mean([p.influence for p in present]),
                               label=f"in {len(present)}/{n} prompts" + (f": {first.label}" if first.label else ""),
                               ))  # fmt: skip
    edges = []
    for (s, t), c in sorted(ecount.items()):
        if c >= need:
            w = [kd.edges[s, t] for kd in keys if (s, t) in kd.edges]
            edges.append(GraphEdge(source=s, target=t, weight=sum(w) / len(w), weight_normalized=0.0))
    _normalise(edges)
    return GraphFile(metadata=_metadata(graphs, tokens, need, align, len(nodes), len(edges)), nodes=nodes,
                     edges=edges)  # fmt: skip


def _normalise(edges: list[GraphEdge]) -> None:
    into: dict[str, float] = defaultdict(float)
    for e in edges:
        into[e.target] += abs(e.weight)
    for e in edges:
        e.weight_normalized = e.weight / into[e.target] if into[e.target] else 0.0


def _metadata(graphs, tokens: list[str], need: int, align: str, n_nodes: int, n_edges: int) -> Metadata:
    m0: Metadata = graphs[0][1].metadata
    mean = lambda f: Scores(replacement=sum(f(g).replacement for _, g in graphs) / len(graphs),  # noqa: E731
                            completeness=sum(f(g).completeness for _, g in graphs) / len(graphs))  # fmt: skip
    settings = {"common_of": len(graphs), "common_min_graphs": need, "common_align": align,
                "node_threshold": m0.settings.get("node_threshold"),
                "edge_threshold": m0.settings.get("edge_threshold")}  # fmt: skip
    return Metadata(
        prompt=f"common circuit of {len(graphs)} prompts (in at least {need})", tokens=tokens,
        token_ids=[0] * len(tokens), model=m0.model, transcoders=m0.transcoders, n_layers=m0.n_layers,
        settings=settings, scores=mean(lambda g: g.metadata.scores),
        pruned_scores=mean(lambda g: g.metadata.pruned_scores or g.metadata.scores), n_nodes_unpruned=n_nodes,
        n_edges_unpruned=n_edges, created=datetime.now(UTC).isoformat(timespec="seconds"),
        tracer_version=m0.tracer_version,
    )  # fmt: skip
