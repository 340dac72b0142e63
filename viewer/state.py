"""Per-user view state, kept only in the URL: parse, encode and pure updates.

1. parse: query string -> UrlState. Malformed values are dropped, never raised (a shared link must not crash the
   app), and `ignored_values` names them for a note on the page. A URL without any view key takes the graph
   file's saved ViewState instead (`effective_state`).
2. update: small pure functions (select, toggle_pin, group, ungroup, unpin, set_label, ...) -> a new UrlState.
3. encode: UrlState -> query string; it always carries `pinnedIds` (maybe empty), so a view emptied by the user
   stays empty on reload instead of falling back to the saved one.
Query names follow Anthropic's frontend: clickedId, pinnedIds (comma-separated), supernodes (JSON
[[label, id, ...], ...]), clerps (JSON [[id, label], ...]), pruningThreshold, linkType; plus `graph` (the file)
and `pinnedEdges=all` (draw every edge of the pinned nodes, not only those among them).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, quote, urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tracer.schema import Supernode, ViewState
from viewer.ids import LinkType, QueryKey

MAX_PINNED = 200  # the subgraph panel stays readable (and cytoscape fast) up to about this many nodes
MAX_ID_CHARS = 200
ALL_EDGES = "all"  # pinnedEdges value
GROUP_PREFIX = "group:"  # pinned-list item value of a supernode: GROUP_PREFIX + its index
VIEW_KEYS = (QueryKey.CLICKED, QueryKey.PINNED, QueryKey.SUPERNODES, QueryKey.CLERPS, QueryKey.THRESHOLD)


class UrlState(BaseModel):
    """Everything one browser tab is looking at. Frozen: updates return a copy."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    graph: str | None = Field(default=None, description="graph file relative to the served folder (folder mode)")
    clicked: str | None = Field(default=None, description="selected node id")
    pinned: tuple[str, ...] = Field(default=(), description="pinned node ids, in pin order")
    supernodes: tuple[Supernode, ...] = Field(default=(), description="groups of pinned nodes shown as one")
    labels: dict[str, str] = Field(default_factory=dict, description="node id -> edited label (clerp)")
    threshold: float | None = Field(
        default=None, gt=0.0, le=1.0, description="re-pruning node threshold, None = file's"
    )
    link_type: LinkType = LinkType.BOTH
    all_pinned_edges: bool = Field(default=False, description="draw all edges of pinned nodes, not only among them")
    explicit: bool = Field(default=False, description="the URL carried view keys (else the file's saved view applies)")


# 1. parse

MAX_JSON_CHARS = 1 << 20  # a supernodes / clerps value longer than this is dropped, not parsed


def _json_rows(text: str) -> list[list[str]] | None:
    if len(text) > MAX_JSON_CHARS:
        return None
    try:
        rows = json.loads(text)
    except (ValueError, RecursionError):  # a shared link nested 10⁵ deep must not cost a 500
        return None
    ok = isinstance(rows, list) and all(
        isinstance(r, list) and len(r) >= 2 and all(isinstance(s, str) and len(s) <= MAX_ID_CHARS for s in r)
        for r in rows
    )
    return rows if ok else None


def _parse_value(key: QueryKey, raw: str) -> tuple[str, object] | None:
    """One query value -> (field name, value), or None when malformed."""
    if key is QueryKey.GRAPH:
        return ("graph", raw) if raw else None
    if key is QueryKey.CLICKED:
        return ("clicked", raw or None) if len(raw) <= MAX_ID_CHARS else None
    if key is QueryKey.PINNED:
        ids = [s for s in raw.split(",") if s and len(s) <= MAX_ID_CHARS]
        return "pinned", tuple(dict.fromkeys(ids))[:MAX_PINNED]
    if key is QueryKey.THRESHOLD:
        try:
            value = float(raw)
        except ValueError:
            return None
        return ("threshold", value) if 0.0 < value <= 1.0 else None
    if key is QueryKey.LINK_TYPE:
        return ("link_type", LinkType(raw)) if raw in {t.value for t in LinkType} else None
    if key is QueryKey.PINNED_EDGES:
        return ("all_pinned_edges", raw == ALL_EDGES) if raw in (ALL_EDGES, "") else None
    rows = _json_rows(raw)
    if rows is None:
        return None
    if key is QueryKey.SUPERNODES:
        return "supernodes", tuple(Supernode(label=r[0], members=list(dict.fromkeys(r[1:]))) for r in rows)
    return "labels", {r[0]: r[1] for r in rows if len(r) == 2}  # CLERPS


def _dropped_parts(key: QueryKey, raw: str) -> bool:
    """Whether a value that parsed lost some of its parts (ids too long or beyond MAX_PINNED, bad clerp rows)."""
    if key is QueryKey.PINNED:
        ids = [s for s in raw.split(",") if s]
        return any(len(s) > MAX_ID_CHARS for s in ids) or len(dict.fromkeys(ids)) > MAX_PINNED
    if key is QueryKey.CLERPS:
        return any(len(r) != 2 for r in _json_rows(raw) or [])
    return False


def ignored_values(search: str | None) -> list[str]:
    """`key=value` (shortened) of every URL value that was dropped in whole or in part."""
    query = parse_qs((search or "").lstrip("?"), keep_blank_values=True)
    out = []
    for key in QueryKey:
        if key.value in query:
            raw = query[key.value][-1]
            if _parse_value(key, raw) is None or _dropped_parts(key, raw):
                out.append(f"{key.value}={raw if len(raw) <= 40 else raw[:39] + '…'}")
    return out


def parse_query(search: str | None) -> UrlState:
    """`?a=b&...` -> UrlState; unknown or malformed keys are ignored."""
    query = parse_qs((search or "").lstrip("?"), keep_blank_values=True)
    fields: dict[str, object] = {}
    for key in QueryKey:
        if key.value in query and (parsed := _parse_value(key, query[key.value][-1])) is not None:
            fields[parsed[0]] = parsed[1]
    fields["explicit"] = any(k.value in query for k in VIEW_KEYS)
    try:
        return UrlState.model_validate(fields)
    except ValidationError:
        return UrlState()


def from_view(view: ViewState, graph: str | None = None) -> UrlState:
    return UrlState(graph=graph, clicked=view.clicked, pinned=tuple(view.pinned)[:MAX_PINNED],
                    supernodes=tuple(view.supernodes), labels=dict(view.labels),
                    threshold=view.node_threshold)  # fmt: skip


def effective_state(search: str | None, saved: ViewState | None) -> UrlState:
    """The state a page shows: the URL's view keys, or the saved view when the URL has none."""
    state = parse_query(search)
    if state.explicit or saved is None:
        return state
    return from_view(saved, state.graph).model_copy(update={"link_type": state.link_type,
                                                           "all_pinned_edges": state.all_pinned_edges})


def to_view(state: UrlState) -> ViewState:
    """The part of the state that Save writes into the graph file."""
    return ViewState(clicked=state.clicked, pinned=list(state.pinned), supernodes=list(state.supernodes),
                     labels=dict(state.labels), node_threshold=state.threshold)  # fmt: skip


# 2. update


def _with(state: UrlState, **update: object) -> UrlState:
    return state.model_copy(update=update | {"explicit": True})


def select(state: UrlState, node: str | None) -> UrlState:
    return _with(state, clicked=node)


def toggle_pin(state: UrlState, node: str) -> UrlState:
    if node in state.pinned:
        return unpin(state, [node])
    return _with(state, pinned=(*state.pinned, node)[:MAX_PINNED])


def click(state: UrlState, node: str, pin: bool) -> UrlState:
    """A click on a node: select it, or with a modifier key toggle its pin."""
    return toggle_pin(state, node) if pin else select(state, node)


def item_members(state: UrlState, item: str) -> list[str]:
    """Node ids behind a pinned-list item: a supernode's members, or the node itself."""
    if item.startswith(GROUP_PREFIX):
        idx = item.removeprefix(GROUP_PREFIX)
        if idx.isdigit() and int(idx) < len(state.supernodes):
            return list(state.supernodes[int(idx)].members)
        return []
    return [item] if item in state.pinned else []


def _groups_of(state: UrlState, items: list[str]) -> set[int]:
    return {int(i.removeprefix(GROUP_PREFIX)) for i in items if i.startswith(GROUP_PREFIX) and item_members(state, i)}


def group(state: UrlState, items: list[str], label: str = "") -> UrlState:
    """Merge the chosen items (nodes and supernodes) into one supernode; needs at least two nodes."""
    members = list(dict.fromkeys(m for i in items for m in item_members(state, i)))
    if len(members) < 2:
        return state
    drop = _groups_of(state, items)
    kept = [g for k, g in enumerate(state.supernodes) if k not in drop]
    taken = {m for g in kept for m in g.members}
    members = [m for m in members if m not in taken]
    name = label.strip() or f"group {len(kept) + 1}"
    return _with(state, supernodes=(*kept, Supernode(label=name, members=members)))


def ungroup(state: UrlState, items: list[str]) -> UrlState:
    drop = _groups_of(state, items)
    return _with(state, supernodes=tuple(g for k, g in enumerate(state.supernodes) if k not in drop))


def unpin(state: UrlState, items: list[str]) -> UrlState:
    gone = {m for i in items for m in item_members(state, i)}
    groups = (Supernode(label=g.label, members=[m for m in g.members if m not in gone]) for g in state.supernodes)
    return _with(state, pinned=tuple(p for p in state.pinned if p not in gone),
                 supernodes=tuple(g for g in groups if g.members))  # fmt: skip


def set_label(state: UrlState, items: list[str], text: str) -> UrlState:
    """Rename the chosen supernodes and relabel the chosen nodes (the clicked node when none is chosen);
    an empty text restores a node's original label."""
    text = text.strip()
    groups = _groups_of(state, items)
    nodes = [i for i in items if not i.startswith(GROUP_PREFIX)] or ([] if items else [state.clicked])
    labels = dict(state.labels)
    for node in filter(None, nodes):
        if text:
            labels[node] = text
        else:
            labels.pop(node, None)
    supernodes = tuple(Supernode(label=text or g.label, members=g.members) if k in groups else g
                       for k, g in enumerate(state.supernodes))  # fmt: skip
    return _with(state, labels=labels, supernodes=supernodes)


def set_threshold(state: UrlState, value: float | None, file_threshold: float | None) -> UrlState:
    """None (the file's own pruning) when the slider sits on the threshold the file was pruned with."""
    if value is None or (file_threshold is not None and abs(value - file_threshold) < 1e-9):
        return _with(state, threshold=None)
    return _with(state, threshold=float(value))


def set_link_type(state: UrlState, link_type: str) -> UrlState:
    return state.model_copy(update={"link_type": LinkType(link_type)})


def set_all_pinned_edges(state: UrlState, on: bool) -> UrlState:
    return state.model_copy(update={"all_pinned_edges": on})


# 3. encode


def to_query(state: UrlState) -> str:
    """UrlState -> `?graph=...&pinnedIds=...`; compact JSON, readable ids (`@`, `,` and `/` left unescaped)."""
    pairs: list[tuple[str, str]] = []
    if state.graph:
        pairs.append((QueryKey.GRAPH.value, state.graph))
    if state.clicked:
        pairs.append((QueryKey.CLICKED.value, state.clicked))
    pairs.append((QueryKey.PINNED.value, ",".join(state.pinned)))
    if state.supernodes:
        rows = [[g.label, *g.members] for g in state.supernodes]
        pairs.append((QueryKey.SUPERNODES.value, json.dumps(rows, separators=(",", ":"))))
    if state.labels:
        rows = [[k, v] for k, v in state.labels.items()]
        pairs.append((QueryKey.CLERPS.value, json.dumps(rows, separators=(",", ":"))))
    if state.threshold is not None:
        pairs.append((QueryKey.THRESHOLD.value, f"{state.threshold:g}"))
    if state.link_type is not LinkType.BOTH:
        pairs.append((QueryKey.LINK_TYPE.value, state.link_type.value))
    if state.all_pinned_edges:
        pairs.append((QueryKey.PINNED_EDGES.value, ALL_EDGES))
    return "?" + urlencode(pairs, quote_via=quote, safe="@,/")
