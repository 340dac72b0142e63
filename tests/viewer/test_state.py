"""URL state: round trip, Anthropic's query names, tolerance of malformed links, and the pure updates."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from tracer.schema import Supernode, ViewState
from viewer import state as st
from viewer.ids import LinkType, QueryKey
from viewer.state import UrlState, effective_state, parse_query, to_query

XSS = "<img src=x onerror=alert(1)>"


def full_state() -> UrlState:
    return UrlState(graph="sub/g one.json", clicked="F1.7@3", pinned=("F1.7@3", "EMB@0", "LOGIT5@4"),
                    supernodes=(Supernode(label="say, \"Paris\" & co", members=["F1.7@3", "EMB@0"]),),
                    labels={"F1.7@3": XSS, "ERR0@1": "naïve ✓"}, threshold=0.55, link_type=LinkType.INPUT,
                    all_pinned_edges=True, explicit=True)  # fmt: skip


def test_round_trip_and_names():
    s = full_state()
    q = to_query(s)
    assert parse_query(q) == s
    raw = parse_qs(q.lstrip("?"))
    assert set(raw) == {k.value for k in QueryKey}
    assert raw["pinnedIds"] == ["F1.7@3,EMB@0,LOGIT5@4"] and raw["clickedId"] == ["F1.7@3"]
    assert raw["supernodes"] == ['[["say, \\"Paris\\" & co","F1.7@3","EMB@0"]]']
    assert raw["pruningThreshold"] == ["0.55"] and raw["linkType"] == ["input"] and raw["pinnedEdges"] == ["all"]


def test_empty_view_stays_explicit():
    q = to_query(UrlState(graph="g.json"))
    assert q == "?graph=g.json&pinnedIds="
    saved = ViewState(pinned=["F0.1@1"], clicked="F0.1@1")
    assert effective_state(q, saved).pinned == ()  # the user emptied it: the saved view must not come back
    fresh = effective_state("?graph=g.json&linkType=output", saved)
    assert fresh.pinned == ("F0.1@1",) and fresh.clicked == "F0.1@1" and fresh.link_type is LinkType.OUTPUT
    assert fresh.graph == "g.json"


@pytest.mark.parametrize("query, expect", [
    ("?pinnedIds=a,,b,a&supernodes=notjson&clerps=[1,2]", dict(pinned=("a", "b"))),
    ("?pruningThreshold=7&linkType=bogus&clickedId=x", dict(clicked="x")),
    ("?pruningThreshold=nan&supernodes=[[\"only-label\"]]", dict()),
    ("?clerps=[[\"a\",\"b\",\"c\"],[\"d\",\"e\"]]&pruningThreshold=0.3", dict(labels={"d": "e"}, threshold=0.3)),
])  # fmt: skip
def test_malformed_values_are_dropped(query, expect):
    s = parse_query(query)
    assert s == UrlState(explicit=True, **expect)


def test_click_select_and_pin():
    s = UrlState()
    s = st.click(s, "A", pin=False)
    assert (s.clicked, s.pinned) == ("A", ())
    s = st.click(s, "B", pin=True)
    assert (s.clicked, s.pinned) == ("A", ("B",))
    s = st.click(st.toggle_pin(s, "A"), "B", pin=True)
    assert s.pinned == ("A",)


def test_group_ungroup_unpin():
    s = UrlState(pinned=("A", "B", "C", "D"))
    assert st.group(s, ["A"]) == s  # a supernode needs two nodes
    g1 = st.group(s, ["A", "B"], "first")
    assert g1.supernodes == (Supernode(label="first", members=["A", "B"]),)
    g2 = st.group(g1, ["group:0", "C"])  # merging a supernode with a node
    assert g2.supernodes == (Supernode(label="group 1", members=["A", "B", "C"]),)
    assert st.ungroup(g2, ["group:0"]).supernodes == ()
    un = st.unpin(g2, ["A", "D"])
    assert un.pinned == ("B", "C") and un.supernodes == (Supernode(label="group 1", members=["B", "C"]),)
    assert st.unpin(un, ["group:0"]).pinned == ()
    assert st.item_members(g2, "group:7") == [] and st.item_members(g2, "Z") == []


def test_labels_and_threshold():
    s = st.group(UrlState(pinned=("A", "B", "C"), clicked="C"), ["A", "B"])
    s = st.set_label(s, ["group:0", "A"], " renamed ")
    assert s.supernodes[0].label == "renamed" and s.labels == {"A": "renamed"}
    s = st.set_label(s, [], "clicked one")  # nothing checked: the clicked node
    assert s.labels == {"A": "renamed", "C": "clicked one"}
    s = st.set_label(s, ["A"], "")
    assert s.labels == {"C": "clicked one"}
    assert st.set_threshold(s, 0.8, 0.8).threshold is None
    assert st.set_threshold(s, 0.6, 0.8).threshold == 0.6
    assert st.to_view(st.set_threshold(s, 0.6, 0.8)).node_threshold == 0.6


@pytest.mark.parametrize("query, expect", [
    ("?pruningThreshold=abc&supernodes=garbage&clerps=[1]", ["supernodes=garbage", "clerps=[1]",
                                                             "pruningThreshold=abc"]),
    ('?clerps=[["a","b","c"],["d","e"]]&linkType=sideways', ['clerps=[["a","b","c"],["d","e"]]', "linkType=sideways"]),
    ("?pinnedIds=" + "x" * 300 + ",ok&pinnedEdges=maybe", ["pinnedIds=" + "x" * 39 + "…", "pinnedEdges=maybe"]),
    ("?graph=g.json&pinnedIds=a,b&pruningThreshold=0.5&unknownKey=1", []),
])  # fmt: skip
def test_ignored_values_are_named(query, expect):
    assert sorted(st.ignored_values(query)) == sorted(expect)
