"""Dash component ids, defined once, and the attribute that makes an element a link to a node."""

from __future__ import annotations

from enum import Enum


class Id(str, Enum):
    URL = "url"
    CLICK_EVENT = "click-event"  # store: {"id", "pin", "t"} from a main-graph click (clientside, with modifiers)
    KEY_EVENT = "key-event"  # store: {"key", "t"} from document key presses (Escape clears the selection)
    RENDERED = "rendered"  # store: what the main figure currently shows (decides full redraw vs Patch)
    LISTENERS = "listeners"  # dummy output of the clientside callback that installs document listeners
    AXES_SYNC = "axes-sync"  # dummy output of the clientside callback that keeps the overlay on the main axes
    HOVER_EVENT = "hover-event"  # store: the hovered main-graph node id (clientside, deduplicated)
    SUBGRAPH_FIT = "subgraph-fit"  # dummy output of the clientside callback that fits the subgraph to its box
    # page sections
    PICKER = "picker"
    ERROR_CARD = "error-card"
    GRAPH_PAGE = "graph-page"
    HEADER = "header"
    SCORES = "scores"
    STATUS = "status"
    URL_NOTE = "url-note"  # dismissible note: which URL values were ignored
    URL_NOTE_TEXT = "url-note-text"
    URL_NOTE_CLOSE = "url-note-close"
    # main graph and controls
    MAIN_GRAPH = "main-graph"
    OVERLAY_GRAPH = "overlay-graph"
    THRESHOLD = "threshold"
    LINK_TYPE = "link-type"
    PINNED_EDGES = "pinned-edges"  # checklist: all edges of the pinned nodes (else only those among them)
    SEARCH = "search"
    SEARCH_RESULTS = "search-results"
    # panels
    DETAIL = "detail"
    CONNECTIONS = "connections"
    PIN_BUTTON = "pin-button"
    # subgraph
    SUBGRAPH = "subgraph"
    SUBGRAPH_SCORES = "subgraph-scores"  # the pinned subgraph's replacement / completeness, over the panel
    PINNED_LIST = "pinned-list"
    GROUP_BUTTON = "group-button"
    UNGROUP_BUTTON = "ungroup-button"
    UNPIN_BUTTON = "unpin-button"
    LABEL_INPUT = "label-input"
    LABEL_BUTTON = "label-button"
    # file actions
    SAVE_BUTTON = "save-button"
    EXPORT_JSON = "export-json"
    EXPORT_NEURONPEDIA = "export-neuronpedia"
    EXPORT_PNG = "export-png"
    FIGURE_KIND = "figure-kind"  # paper figure of the whole graph or the pinned subgraph
    FIGURE_SIZE = "figure-size"  # its size, "WxH" in inches
    FIGURE_SVG = "figure-svg"
    FIGURE_PNG = "figure-png"
    DOWNLOAD = "download"
    # intervene panel (viewer.intervene)
    INTERVENE_ACTION = "intervene-action"  # radio: ablate | scale
    INTERVENE_FACTOR = "intervene-factor"  # the scale factor
    INTERVENE_BUTTON = "intervene-button"
    INTERVENE_OUT = "intervene-out"  # top logits before/after and the continuations


NODE_ATTR = "data-node"  # an element carrying it selects that node id when clicked (one document listener)


class LinkType(str, Enum):
    """Which edges of the clicked and pinned nodes the main graph draws."""

    INPUT = "input"
    OUTPUT = "output"
    BOTH = "both"


class QueryKey(str, Enum):
    """URL query keys; the view-state ones are those of Anthropic's frontend."""

    GRAPH = "graph"  # graph file, relative to the served folder
    CLICKED = "clickedId"
    PINNED = "pinnedIds"
    SUPERNODES = "supernodes"
    CLERPS = "clerps"
    THRESHOLD = "pruningThreshold"
    LINK_TYPE = "linkType"
    PINNED_EDGES = "pinnedEdges"  # ours: "all" draws every edge of the pinned nodes, not only those among them
