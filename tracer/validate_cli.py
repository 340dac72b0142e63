"""`tracer validate GRAPH`: ablate the graph's top features and supernodes and compare with its predictions.

1. Check the report path is writable, load the graph and its unpruned sidecar (before the model).
2. Load model and transcoders and check they are the ones the graph was traced with (content hashes).
3. tracer.validate.validate: candidates, predictions, measured ablations, Spearman, sign agreement, completeness.
4. Write the report: JSON (REPORT, default GRAPH's name + `.validation.json`) and a scatter plot of predicted vs
   measured change beside it (`.html`, plotly, self-contained); a `.png` too when plotly's image export (kaleido)
   works on this machine, else the report says why not.
5. Print a summary (--json: the report).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from dataclasses import asdict
from pathlib import Path

from tracer.errors import TracerError


class ValidateError(TracerError):
    """The graph cannot be validated with the given model and transcoders."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="ablate a graph's top features and compare with its predicted effects")
    p.add_argument("graph", type=Path, help="graph file (with its .adjacency.safetensors sidecar)")
    p.add_argument("--top", type=int, default=20, help="features to ablate, by influence (plus every supernode)")
    p.add_argument("--mode", choices=["replacement", "free"], default="replacement",
                   help="replacement: patterns, norms, errors frozen, features re-encoded; free: the real model",
                   )  # fmt: skip
    p.add_argument("-o", "--output", type=Path, help="report JSON (default: GRAPH name + .validation.json)")
    p.add_argument("--no-completeness", action="store_true", help="skip the ablate-everything-outside check")
    p.add_argument("--no-png", action="store_true", help="write the plot as HTML only (PNG export takes seconds)")
    p.add_argument("--model", type=Path, help="model the graph was traced with (default: bundled model)")
    p.add_argument("--transcoders", type=Path, help="its transcoders (default: bundled CLT)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run)


def _finite(x: object) -> object:
    """JSON-safe: NaN -> None."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def run(args: argparse.Namespace) -> int:
    from tracer.io import check_output

    if args.top < 1:
        raise ValidateError("--top must be >= 1")
    out = args.output or args.graph.with_name(args.graph.stem + ".validation.json")
    check_output(out, "report")  # 1.
    import torch

    from tracer.graphfile import load_attribution, load_graph
    from tracer.models import load_model
    from tracer.models.loading import file_hash
    from tracer.schema import node_id
    from tracer.validate import validate
    from transcoders import DEFAULT_TRANSCODERS, load_transcoders

    graph = load_graph(args.graph)
    attr = load_attribution(args.graph, graph)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)  # 2.
    tc_dir = Path(args.transcoders or DEFAULT_TRANSCODERS)
    tc_hash = file_hash(sorted(tc_dir.glob("*.safetensors")))
    m = graph.metadata
    if m.model.content_hash != lm.content_hash or m.transcoders.content_hash != tc_hash:
        raise ValidateError(f"the graph was traced with {m.model.name} ({m.model.content_hash}) and "
                            f"{m.transcoders.name} ({m.transcoders.content_hash}), not {lm.name} ({lm.content_hash}) "
                            f"and {tc_dir.name} ({tc_hash}); pass --model/--transcoders")  # fmt: skip
    tc = load_transcoders(tc_dir, lm.cfg, dtype=lm.model.embed.weight.dtype)
    lay = attr.layout
    row_of = {node_id(lay.node(r)): r for r in range(lay.n_nodes)}
    mask = torch.zeros(lay.n_nodes, dtype=torch.bool)
    mask[[row_of[n.id] for n in graph.nodes if n.id in row_of]] = True
    supernodes = {s.label: [row_of[i] for i in s.members if i in row_of] for s in graph.view.supernodes}
    minus = m.settings.get("minus")
    minus_id = None
    if isinstance(minus, str) and lm.tokenizer is not None:
        minus_id = lm.tokenizer.encode(minus)[0]
    with torch.inference_mode(False):  # 3.
        v = validate(lm.model, tc, attr, mask, top=args.top, mode=args.mode, supernodes=supernodes,
                     minus=minus_id, check_completeness=not args.no_completeness)  # fmt: skip
    report = _finite(asdict(v) | {"graph": str(args.graph), "prompt": m.prompt})
    assert isinstance(report, dict)
    report["plot"] = _plots(v, out, m.prompt, png=not args.no_png)  # 4.
    from tracer.io import atomic_write_text

    atomic_write_text(out, json.dumps(report, indent=1))
    print(json.dumps(report) if args.json else _format(report, out))  # 5.
    return 0


def _plots(v, out: Path, prompt: str, png: bool = True) -> dict:
    """Step 4: the scatter plot as HTML (and PNG when image export works); returns their paths / the reason."""
    import plotly.graph_objects as go

    from tracer.io import atomic_write_bytes, atomic_write_text

    feats = [c for c in v.candidates if len(c.features) == 1]
    groups = [c for c in v.candidates if len(c.features) > 1]
    fig = go.Figure()
    for name, cs, sym in (("features", feats, "circle"), ("supernodes", groups, "diamond")):
        if cs:
            fig.add_trace(go.Scatter(x=[c.predicted for c in cs], y=[c.measured for c in cs], mode="markers",
                                     name=name, text=[c.label for c in cs], marker={"symbol": sym, "size": 9},
                                     hovertemplate="%{text}<br>predicted %{x:.3f}<br>measured %{y:.3f}"))  # fmt: skip
    vals = [c.predicted for c in v.candidates] + [c.measured for c in v.candidates]
    if vals:
        lo, hi = min(vals), max(vals)
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"dash": "dot"}))
    fig.update_layout(
        title=f"{prompt[-60:]!r} -> {v.target!r} ({v.mode})<br>Spearman: signed effect {v.spearman_signed:.2f}, "
        f"influence {v.spearman_influence:.2f}",
        xaxis_title="predicted change of the target logit (-signed total effect)",
        yaxis_title="measured change when ablated", template="plotly_white",
    )  # fmt: skip
    html = out.with_suffix(".html")
    atomic_write_text(html, fig.to_html(include_plotlyjs=True, full_html=True))
    if not png:
        return {"html": str(html), "png": None, "png_error": "--no-png"}
    png_path = out.with_suffix(".png")
    if importlib.util.find_spec("kaleido") is None:  # without it plotly's export can stall for minutes
        return {"html": str(html), "png": None, "png_error": "kaleido is not installed (pip install 'clt-tracer[png]'"
                "; it also needs a Chrome/Chromium); the HTML plot has a PNG download button"}  # fmt: skip
    try:
        atomic_write_bytes(png_path, fig.to_image(format="png"))  # not write_image: it writes in place
        return {"html": str(html), "png": str(png_path)}
    except Exception as e:  # kaleido missing or its browser unavailable: the HTML still stands
        return {"html": str(html), "png": None, "png_error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}


def _format(r: dict, out: Path) -> str:
    def f(x: object) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines = [f"graph: {r['graph']}  target: {r['target']!r}  mode: {r['mode']}  candidates: {len(r['candidates'])}",
             f"Spearman(signed total effect, measured): {f(r['spearman_signed'])}",
             f"Spearman(influence, |measured|): {f(r['spearman_influence'])}; target influence: "
             f"{f(r['spearman_target_influence'])}", f"sign agreement: {f(r['sign_agreement'])}",
             "worst disagreements: " + ", ".join(r["worst"])]  # fmt: skip
    c = r.get("completeness")
    if c:
        lines.append(f"completeness: {f(c['surviving'])} of the target logit survives ablating the {c['n_outside']} "
                     f"features outside the graph (all features ablated: {f(c['all_ablated'])} of "
                     f"{f(c['target_before'])})")  # fmt: skip
    png = f", {r['plot']['png']}" if r["plot"]["png"] else f"; no PNG ({r['plot']['png_error']})"
    lines.append(f"report: {out}; plot: {r['plot']['html']}{png}")
    return "\n".join(lines)
