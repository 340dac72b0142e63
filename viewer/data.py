"""Graph files for the viewer: which may be opened, loading them (cached by file identity), saving view state.

1. serve: the app serves one graph file or one folder. `resolve(graph_id)` maps a URL's graph id to a path only
   when it is a relative name of a `.json` file inside the served folder (no `..`, no absolute path, no symlink
   leading out); anything else is a GraphFileError.
2. list: the folder's graph files with prompt, model, date and scores, for the picker; unreadable ones, and
   names that `resolve` refuses (a symlink leading out), are listed with their error and nothing read from them.
3. load: load_graph (or reprune at a viewer threshold, from the sidecar) -> Loaded (GraphView + coordinates),
   cached by (path, mtime, size, threshold) so a file re-traced under the same name is never stale. The sidecar
   is read when the graph opens: a corrupt one counts as absent (slider off, with a note), the graph still shows.
   The cache belongs to one GraphStore (one per app), holds only file-derived data shared by all sessions, and is
   bounded. Messages name files relative to the served folder (`public`), never by their server path.
   Re-prunes read the file's one shared sidecar (cached; concurrent requests for one key build it once) and run
   at most Gate's count at a time with a short queue; beyond it the answer is ViewerBusy at once.
4. scores: replacement/completeness of a node subset (the pinned subgraph), from the sidecar.
5. save: write a ViewState into the graph file (atomic, via save_graph).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path, PurePosixPath
from typing import NamedTuple, TypeVar

import torch

from tracer.batch import INDEX_NAME, load_index
from tracer.errors import GraphFileError, TracerError
from tracer.graphfile import load_attribution, load_graph, reprune_loaded, save_graph, sidecar_path
from tracer.layout import NodeKind
from tracer.result import Attribution
from tracer.schema import GraphFile, Scores, ViewState, node_id
from tracer.scores import graph_scores
from viewer.figures import Coordinates, coordinates
from viewer.model import GraphView

T = TypeVar("T")
log = logging.getLogger("viewer")
MAX_LISTED = 500
NO_SIDECAR = "no adjacency sidecar: subgraph scores and re-pruning unavailable"
DEFAULT_EDGE_THRESHOLD = 0.98
SKIP_NAMES = {"graph-metadata.json", INDEX_NAME}  # Neuronpedia's folder index and tracer.batch's: not graphs


class Loaded(NamedTuple):
    graph_id: str
    path: Path
    view: GraphView
    coords: Coordinates
    threshold: float | None  # the viewer's re-pruning threshold (None: as pruned in the file)
    has_sidecar: bool  # a sidecar that loads and matches the graph (re-pruning and subgraph scores work)
    stamp: tuple[int, int]  # the file's (mtime_ns, size) when loaded
    sidecar_note: str = ""  # why there is no usable sidecar ('' when there is one)

    @property
    def file_threshold(self) -> float | None:
        t = self.view.graph.metadata.settings.get("node_threshold")
        return float(t) if isinstance(t, int | float) else None


class Entry(NamedTuple):
    """One row of the picker."""

    graph_id: str
    prompt: str = ""
    model: str = ""
    created: str = ""
    scores: Scores | None = None
    n_nodes: int = 0
    error: str = ""


class _Flight:
    """One build in progress: concurrent requests for its key wait for it instead of building again."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None


class Lru:
    """A small thread-safe LRU cache (values are immutable once built). Single-flight: while a key is being
    built, other callers of the same key wait for that build (50 requests for one sidecar read it once)."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict[Hashable, object](), threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]  # type: ignore[return-value]
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value  # type: ignore[return-value]
        try:
            value = build()  # outside the lock: a slow load must not block other sessions' cache hits
        except BaseException as e:
            flight.error = e
            raise
        else:
            flight.value = value
            with self._lock:
                self._items[key] = value
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            return value
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()


class ViewerBusy(TracerError):
    """Too many re-prunes are running or queued: the request is answered at once instead of waiting."""


class Gate:
    """At most `running` re-prunes at a time, at most `queued` waiting (each up to `wait_s`); beyond that ViewerBusy.
    Bounds the memory of many distinct thresholds requested at once."""

    def __init__(self, running: int = 2, queued: int = 6, wait_s: float = 5.0):
        self._sem, self._lock, self.queued, self.wait_s = threading.BoundedSemaphore(running), threading.Lock(), \
            queued, wait_s  # fmt: skip
        self._waiting = 0

    def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._waiting >= self.queued:
                raise ViewerBusy("busy: too many re-prunes at once; try this threshold again in a moment")
            self._waiting += 1
        try:
            got = self._sem.acquire(timeout=self.wait_s)
        finally:
            with self._lock:
                self._waiting -= 1
        if not got:
            raise ViewerBusy("busy: re-pruning queue is full; try this threshold again in a moment")
        try:
            return fn()
        finally:
            self._sem.release()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


class GraphStore:
    """The graph files one app serves: a single file, or every `.json` under a folder."""

    def __init__(self, path: str | Path, cache_size: int = 4):
        p = Path(path).expanduser().resolve()
        if not p.exists():
            raise GraphFileError(f"no such graph file or folder: {path}")
        self.single: Path | None = p if p.is_file() else None
        self.root = p.parent if p.is_file() else p
        self._graphs, self._meta = Lru(cache_size), Lru(MAX_LISTED)
        self._attr, self._scores, self._checks = Lru(2), Lru(64), Lru(MAX_LISTED)
        self._figures = Lru(cache_size)
        self.gate = Gate()

    # 1. serve

    def resolve(self, graph_id: str | None) -> Path:
        """The file behind a URL graph id, only if it lies inside the served folder."""
        if self.single is not None:
            if graph_id in (None, "", self.single.name):
                return self.single
            raise GraphFileError(f"only {self.single.name} is served here, not {graph_id!r}")
        if not graph_id:
            raise GraphFileError("no graph selected")
        parts = graph_id.split("/")
        pure = PurePosixPath(graph_id)
        if (pure.is_absolute() or "\\" in graph_id or ":" in graph_id or any(p in ("", ".", "..") for p in parts)
                or pure.suffix != ".json" or any(ord(c) < 32 for c in graph_id)):  # fmt: skip
            raise GraphFileError(f"invalid graph id {graph_id!r}: expected a relative .json path in the served folder")
        path = (self.root / pure).resolve()
        if not path.is_relative_to(self.root):
            raise GraphFileError(f"graph id {graph_id!r} points outside the served folder")
        if not path.is_file():
            raise GraphFileError(f"graph file not found: {graph_id}")
        return path

    def public(self, message: str) -> str:
        """A message with the served folder's absolute path taken out (paths become relative to it)."""
        root = str(self.root)
        return message.replace(root + "/", "").replace(root, ".")

    def default_id(self) -> str | None:
        return self.single.name if self.single else None

    # 2. list

    def entries(self) -> list[Entry]:
        files = sorted(p for p in self.root.rglob("*.json")
                       if not any(s.startswith(".") for s in p.relative_to(self.root).parts)
                       and p.name not in SKIP_NAMES)  # fmt: skip
        indexed = self._indexed()
        listed = {e.graph_id for e in indexed}
        rest = [p for p in files if p.relative_to(self.root).as_posix() not in listed]
        return (indexed + [self._entry(p) for p in rest])[:MAX_LISTED]

    def _indexed(self) -> list[Entry]:
        """A batch's index.json (tracer.batch), in prompt-file order, read without opening each graph; failed
        prompts are listed with their line number and error."""
        path = self.root / INDEX_NAME
        if not path.is_file():
            return []
        try:
            index = load_index(path)
        except GraphFileError as e:
            return [Entry(INDEX_NAME, error=self.public(str(e)))]
        model = index.model.name if index.model else ""
        return [Entry(e.file, e.prompt, model, "", e.scores, e.n_nodes) if e.file and e.status != "failed"
                else Entry(f"line {e.line}", e.prompt, error=e.error) for e in index.entries]  # fmt: skip

    def _entry(self, path: Path) -> Entry:
        gid = path.relative_to(self.root).as_posix()
        try:
            real = self.resolve(gid)  # the rule that opening applies: nothing is read through a link leading out
            return self._meta.get((real, _stamp(real)), lambda: self._summarise(gid, load_graph(real)))
        except GraphFileError as e:
            return Entry(gid, error=self.public(str(e)))
        except Exception as e:  # one odd file must not take the picker down for everyone
            log.warning("cannot list %s: %r", gid, e)
            return Entry(gid, error=f"unreadable graph file ({type(e).__name__})")

    @staticmethod
    def _summarise(gid: str, g: GraphFile) -> Entry:
        m = g.metadata
        return Entry(gid, m.prompt, m.model.name, m.created, m.scores, len(g.nodes))

    # 3. load

    def load(self, graph_id: str | None, threshold: float | None = None) -> Loaded:
        path = self.resolve(graph_id)
        gid = graph_id or path.name
        stamp = _stamp(path)
        note = self.sidecar_note(path, stamp)
        t = threshold if not note else None
        return self._graphs.get((path, stamp, t, note), lambda: self._build(gid, path, t, note, stamp))

    def _build(self, gid: str, path: Path, threshold: float | None, note: str, stamp: tuple) -> Loaded:
        if threshold is None:
            graph = load_graph(path)
        else:  # from the one shared sidecar of this file, at most Gate's count at a time
            saved = self.load(gid).view.graph
            edge_t = saved.metadata.settings.get("edge_threshold", DEFAULT_EDGE_THRESHOLD)
            edge_t = float(edge_t) if isinstance(edge_t, int | float) else DEFAULT_EDGE_THRESHOLD
            graph = self.gate.run(lambda: reprune_loaded(saved, self.attribution(path)[0], threshold, edge_t))
        view = GraphView.build(graph)
        return Loaded(gid, path, view, coordinates(view), threshold, not note, stamp, note)

    def sidecar_note(self, path: Path, stamp: tuple[int, int]) -> str:
        """'' when the graph's sidecar loads and has the graph's tokens; else why it cannot be used (cached per
        file version, so a corrupt sidecar is read once, not at every request)."""
        side = sidecar_path(path)
        if not side.exists():
            return NO_SIDECAR

        def check() -> str:
            try:
                a, _ = self.attribution(path)
            except TracerError as e:
                return f"{self.public(str(e))}: re-pruning and subgraph scores are off"
            if a.layout.n_pos != len(load_graph(path).metadata.tokens):
                return f"{side.name} belongs to another prompt: re-pruning and subgraph scores are off"
            return ""

        return self._checks.get((path, stamp, _stamp(side)), check)

    def figure(self, loaded: Loaded, labels: dict[str, str], build: Callable[[], T]) -> T:
        """The main figure of a loaded graph with these edited labels, built once (it is the same for every
        session, and building it for a large graph takes a noticeable part of a first render)."""
        key = (loaded.path, loaded.stamp, loaded.threshold, tuple(sorted(labels.items())))
        return self._figures.get(key, build)

    # 4. scores

    def attribution(self, path: Path) -> tuple[Attribution, dict[str, int]]:
        """The unpruned attribution from the sidecar, and node id -> its adjacency row."""

        def build() -> tuple[Attribution, dict[str, int]]:
            a = load_attribution(path)
            return a, {node_id(a.layout.node(r)): r for r in range(a.layout.n_nodes)}

        return self._attr.get((path, _stamp(sidecar_path(path))), build)

    def subgraph_scores(self, loaded: Loaded, members: tuple[str, ...]) -> Scores | None:
        """Scores of the graph reduced to these features (tokens, logits and errors stay); None without sidecar."""
        if not loaded.has_sidecar or not members:
            return None

        def build() -> Scores:
            a, rows = self.attribution(loaded.path)
            keep = a.layout.mask(NodeKind.EMBEDDING) | a.layout.mask(NodeKind.LOGIT)
            keep[torch.tensor([rows[m] for m in members if m in rows], dtype=torch.long)] = True
            return graph_scores(a.adjacency, a.layout, a.logit_probs, keep_mask=keep)

        key = (loaded.path, _stamp(loaded.path), tuple(sorted(set(members))))
        return self._scores.get(key, build)

    # 5. save

    def save_view(self, graph_id: str | None, view: ViewState) -> Path:
        """Write `view` into the graph file on disk (a fresh read, so nothing else in it changes)."""
        path = self.resolve(graph_id)
        graph = load_graph(path)
        graph.view = view
        return save_graph(path, graph)
