"""The viewer app: `create_app(path)` builds a Dash app over one graph file or a folder; `serve` runs it.

1. store: a GraphStore over the path (which files may be opened; a bounded cache of loaded graphs).
2. app: Dash with every script and style served by this process (serve_locally, local assets; no CDN), so it
   works offline; the layout is static and all per-user state lives in each tab's URL.
3. callbacks: viewer.callbacks.register.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dash import Dash

from viewer import DEFAULT_HOST, DEFAULT_PORT, callbacks, layout
from viewer.data import GraphStore
from viewer.features import FeatureStore, features_for
from viewer.handlers import Env, handle_view
from viewer.security import check_port_free, install_host_check, is_loopback, read_only

ASSETS = Path(__file__).parent / "assets"
log = logging.getLogger("viewer")


def create_app(path: str | Path, feature_store: FeatureStore | None = None, cache_size: int = 4,
               preload: bool = False, host: str = DEFAULT_HOST, read_only: bool = False,
               find_features: bool = False, features: str | Path | None = None) -> Dash:  # fmt: skip
    """A Dash app over `path` (a graph .json file, or a folder of them). Raises GraphFileError if it is missing.
    preload: load a single graph file now, so the first page view does not wait for it; host: the address it will
    be bound to (requests naming another Host are refused); read_only: refuse Save. find_features: without a
    feature_store, open `features` (a store file) or find one for the graph (viewer.features.features_for)."""
    store = GraphStore(path, cache_size=cache_size)  # 1.
    if preload and store.single is not None:
        store.load(None)
    if feature_store is None and find_features:
        feature_store = features_for(store, features)
    app = Dash(__name__, assets_folder=str(ASSETS), serve_locally=True, title="clt-tracer viewer",
               update_title="")  # fmt: skip  # 2.
    app.layout = layout.app_layout()
    install_host_check(app.server, host)
    env = Env(store, feature_store, read_only=read_only)
    callbacks.register(app, env)  # 3.
    if preload and store.single is not None:
        handle_view(env, "", None, "", [])  # the first page's main figure, built now and cached
    return app


def serve(path: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, debug: bool = False,
          allow_write: bool = False, features: str | Path | None = None) -> None:  # fmt: skip
    """Serve the viewer until interrupted (binds 127.0.0.1 unless told otherwise). Not loopback: read-only unless
    allow_write. A busy or invalid port is a ConfigError before anything is loaded."""
    check_port_free(host, port)
    ro = read_only(host, allow_write)
    app = create_app(path, preload=True, host=host, read_only=ro, find_features=True, features=features)
    if not is_loopback(host):
        log.warning("serving on %s: anyone who can reach this address can read the served graphs; %s", host,
                    "Save is off (read-only; --allow-write turns it on)" if ro else "and, with --allow-write, "
                    "rewrite their saved views")  # fmt: skip
    print(f"viewer: http://{host}:{port}/  (Ctrl-C to stop)")
    app.run(host=host, port=port, debug=debug, threaded=True)
