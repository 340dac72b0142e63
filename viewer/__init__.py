"""Interactive viewer for attribution graph files (`tracer view`): a Dash app, offline, state in the URL."""
