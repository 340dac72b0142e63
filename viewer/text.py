"""Text for each place the viewer draws it, escaped for that sink and no other (a label must read as typed).

- Dash children, cytoscape labels and matplotlib text: plain strings, drawn as text (React escapes; cytoscape and
  matplotlib draw on a canvas or write escaped XML); nothing to do here, but matplotlib's `$…$` math is turned off
  by the caller.
- plotly text (hover, ticks, text traces, annotations): plotly reads a small HTML subset (`<b>`, `<br>`, `<a>`) and
  decodes only a few entities (`&amp;`, `&lt;`, `&gt;`, numeric ones), so escape exactly `&`, `<` and `>` —
  `html.escape` would also turn quotes into `&quot;` / `&#x27;`, which plotly then shows literally.
"""

from __future__ import annotations

PLOTLY_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def plotly_text(s: str) -> str:
    """`s` as plotly must be given it to show `s` literally (no markup, no entity read as one)."""
    return s.translate(PLOTLY_ESCAPES)
