"""The detail panel's feature dashboard: what a feature store says about the clicked feature (pure components).

1. label: the automatic label with its rule and confidence (or a note that no rule was confident);
2. firing: frequency, mean and max activation;
3. logit effects: top and bottom output tokens as two small bar lists (bar length ∝ |effect|);
4. histogram of non-zero activations (a small static plotly bar chart);
5. contexts grouped by band (top activations, then lower quantiles), each token shaded by its activation relative
   to the feature's max (the title shows the value; a newline shows as ↵).
All token text goes in as plain strings (rendered as text, never HTML).
"""

from __future__ import annotations

from dash import dcc, html

from viewer.features import Example, FeatureDescription

POS, NEG, SHADE = "#1b7837", "#762a83", "208,140,60"
BAND_TITLES = {"top": "Top activations"}


def _label(desc: FeatureDescription) -> html.P:
    if not desc.label:
        return html.P("No automatic label (no rule was confident).", className="note")
    return html.P([html.B("Label: "), desc.label,
                   html.Span(f"  ({desc.label_rule}, confidence {desc.label_confidence:.2f})", className="note")],
                  className="feature-label")  # fmt: skip


def _bars(title: str, items: list[tuple[str, float]], color: str) -> list:
    if not items:
        return []
    top = max(abs(v) for _, v in items) or 1.0
    rows = [html.Div(className="bar-row", children=[
        html.Code(t, className="bar-token"),
        html.Span(className="bar", style={"display": "inline-block", "height": "8px", "backgroundColor": color,
                                          "width": f"{60 * abs(v) / top:.0f}px", "margin": "0 4px"}),
        html.Span(f"{v:+.3g}", className="bar-value")]) for t, v in items[:8]]  # fmt: skip
    return [html.H5(title), html.Div(rows, className="bar-list")]


def histogram_figure(hist: tuple[list[float], list[int]]) -> dict:
    edges, counts = hist
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=False)]
    return {"data": [{"type": "bar", "x": centers, "y": counts, "marker": {"color": f"rgb({SHADE})"},
                      "hovertemplate": "%{x:.3g}: %{y}<extra></extra>"}],
            "layout": {"height": 110, "margin": {"l": 30, "r": 5, "t": 5, "b": 20}, "bargap": 0.05,
                       "xaxis": {"title": None}, "yaxis": {"type": "log"}}}  # fmt: skip


def _context(e: Example, scale: float) -> html.Div:
    return html.Div(className="example", children=[
        html.Span(t.replace("\n", "↵"), title=f"{a:.3g}",
                  style={"backgroundColor": f"rgba({SHADE},{min(1.0, abs(a) / scale):.2f})"})
        for t, a in zip(e.tokens, e.activations, strict=False)])  # fmt: skip


def feature_dashboard(desc: FeatureDescription) -> list:
    """Steps 1-5 of the module docstring."""
    out: list = [_label(desc)]
    if desc.frequency is not None:
        extra = f"; mean {desc.mean:.3g}, max {desc.act_max:.3g}" if desc.mean is not None and desc.act_max else ""
        out.append(html.P(f"fires on {desc.frequency:.3%} of tokens{extra}"))
    out += _bars("Top output tokens (logit lens)", desc.top_tokens, POS)
    out += _bars("Bottom output tokens", desc.bottom_tokens, NEG)
    if desc.input_tokens:
        out += [html.H5("Top input tokens"),
                html.P(", ".join(t for t, _ in desc.input_tokens[:8]), className="tokens")]  # fmt: skip
    if desc.histogram:
        out += [html.H5("Activation histogram"),
                dcc.Graph(figure=histogram_figure(desc.histogram), config={"staticPlot": True},
                          style={"height": "110px"}, className="feature-histogram")]  # fmt: skip
    scale = desc.act_max or max((abs(a) for e in desc.examples for a in e.activations), default=1.0) or 1.0
    band = None
    for e in desc.examples:
        if e.group != band:
            band = e.group
            out.append(html.H5(BAND_TITLES.get(band, band.capitalize())))
        out.append(_context(e, scale))
    return out
