"""Interactive viewer for attribution graph files (`tracer view`): a Dash app, offline, state in the URL."""

DEFAULT_HOST = "127.0.0.1"  # this machine only; serving elsewhere exposes the served graphs
DEFAULT_PORT = 8050
