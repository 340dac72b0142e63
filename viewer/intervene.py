"""The viewer's Intervene panel: ablate or scale the pinned features (or checked supernodes) and see what changes.

1. Which features: the checked items of the pinned list (a supernode stands for its members), else every pinned
   node; only feature nodes can be changed (errors, tokens and logits are skipped and said so).
2. Which model: the bundled default model and CLT (tracer.models.DEFAULT_MODEL, transcoders.DEFAULT_TRANSCODERS),
   loaded once per process, and only if their content hashes are the graph's; otherwise the panel says why.
3. Run: tracer.interventions.intervene in replacement mode on the graph's prompt, then a few tokens of greedy
   continuation plain and steered (tracer.steering in free mode, the real model with the features changed at
   their own positions in the prompt, as pinned: one forward pass per token; the generated tokens themselves are
   not steered).
4. Show: the top next tokens before -> after, the change of the graph's primary target, both continuations.
The handler is plain Python (handle_intervene); the callback is wiring only.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dash import Dash, Input, Output, State, dcc, html

from tracer.errors import TracerError
from tracer.layout import NodeKind
from viewer.ids import Id

if TYPE_CHECKING:
    from viewer.data import Loaded
    from viewer.handlers import Env

ACTIONS = (("ablate", "ablate (0)"), ("scale", "scale by"))
N_TOP = 5
N_GENERATE = 5


def intervene_panel() -> html.Div:
    """The panel's static controls (under the pinned list)."""
    return html.Div(className="intervene", children=[
        html.H4("Intervene"),
        html.Div(className="row", children=[
            dcc.RadioItems(id=Id.INTERVENE_ACTION.value, value="ablate", inline=True,
                           options=[{"label": text, "value": v} for v, text in ACTIONS]),
            dcc.Input(id=Id.INTERVENE_FACTOR.value, type="number", value=2.0, step=0.5, className="size-input",
                      debounce=True),
            html.Button("Run", id=Id.INTERVENE_BUTTON.value, n_clicks=0, className="btn",
                        title="change the checked (else all pinned) features and rerun the model"),
        ]),
        html.Div(id=Id.INTERVENE_OUT.value, className="intervene-out"),
    ])  # fmt: skip


class _Models:
    """The default model and CLT, loaded on first use (one per process; loading is guarded by a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded: tuple | None = None

    def get(self) -> tuple:
        with self.lock:
            if self.loaded is None:
                import torch

                from tracer.models import load_model
                from tracer.models.loading import file_hash
                from transcoders import DEFAULT_TRANSCODERS, load_transcoders

                lm = load_model()
                tc_dir = Path(DEFAULT_TRANSCODERS)
                tc = load_transcoders(tc_dir, lm.cfg, dtype=torch.float32)
                self.loaded = (lm, tc, file_hash(sorted(tc_dir.glob("*.safetensors"))))
            return self.loaded


MODELS = _Models()


def _features(env: Env, search_: str | None, checked: list[str] | None) -> tuple[Loaded, list, list[str]]:
    """Step 1: (loaded graph, FeatureRefs, skipped node ids)."""
    from tracer.interventions import FeatureRef
    from viewer.state import item_members

    st, loaded = env.open(search_)
    items = [c for c in checked or [] if item_members(st, c)] or list(st.pinned)
    ids = [m for item in items for m in (item_members(st, item) or [item])]
    refs, skipped = [], []
    for nid in dict.fromkeys(ids):
        node = loaded.view.node(nid)
        if node is not None and node.kind is NodeKind.FEATURE and node.feature is not None:
            refs.append(FeatureRef(node.layer, node.feature, node.pos))
        else:
            skipped.append(nid)
    return loaded, refs, skipped


def handle_intervene(env: Env, search_: str | None, checked: list[str] | None, action: str | None,
                     factor: float | None) -> list:  # fmt: skip
    """Steps 1-4 -> the panel's children (a one-line message when it cannot run)."""
    t0 = time.perf_counter()
    try:
        loaded, refs, skipped = _features(env, search_, checked)
    except TracerError as e:
        return [html.P(f"Cannot intervene: {e}", className="note")]
    if not refs:
        return [html.P("Pin (or check) at least one feature node to intervene on.", className="note")]
    if action == "scale" and (factor is None or factor != factor):
        return [html.P("Give a number to scale by.", className="note")]
    lm, tc, tc_hash = MODELS.get()
    meta = loaded.view.graph.metadata
    if meta.model.content_hash != lm.content_hash or meta.transcoders.content_hash != tc_hash:
        return [html.P(f"This graph was traced with {meta.model.name} / {meta.transcoders.name}; the viewer can "
                       "only run the bundled default model and CLT.", className="note")]  # fmt: skip
    return _run(lm, tc, meta, refs, skipped, action or "ablate", float(factor or 0.0), t0)


def _run(lm, tc, meta, refs, skipped, action: str, factor: float, t0: float) -> list:
    """Steps 3-4."""
    import torch

    from tracer.interventions import Intervention, Mode, intervene
    from tracer.steering import GenerateConfig, generate

    ivs = [Intervention.scale(factor, *refs) if action == "scale" else Intervention.ablate(*refs)]
    tokens = torch.tensor(meta.token_ids)
    try:
        with torch.inference_mode(False):
            res = intervene(lm.model, tc, tokens, ivs)
            cfg = GenerateConfig(n_tokens=N_GENERATE, mode=Mode.FREE)  # the real model: one pass per token
            plain = generate(lm.model, tc, meta.token_ids, [], cfg)
            steered = generate(lm.model, tc, meta.token_ids, ivs, cfg)
    except TracerError as e:
        return [html.P(f"Cannot intervene: {e}", className="note")]
    name = lm.tokenizer.token_str
    before, after = res.top(N_TOP, after=False), res.top(N_TOP)
    rows = [html.Tr([html.Th("before"), html.Th(""), html.Th("after"), html.Th("")])]
    rows += [html.Tr([html.Td(repr(name(b))), html.Td(f"{pb:.3f}"), html.Td(repr(name(a))), html.Td(f"{pa:.3f}")])
             for (b, pb), (a, pa) in zip(before, after, strict=True)]  # fmt: skip
    what = f"{action} ×{factor:g}" if action == "scale" else "ablate"
    target = res.top(1, after=False)[0][0]  # the graph's primary target (its top token)
    p0 = float(res.logits_before[-1].double().softmax(-1)[target])
    p1 = float(res.logits_after[-1].double().softmax(-1)[target])
    out = [
        html.P(f"{what} {len(refs)} feature(s) (replacement model)"
               + (f"; skipped non-features: {', '.join(skipped)}" if skipped else "")),
        html.Table(rows, className="kv"),
        html.P(f"{name(target)!r}: p {p0:.3f} -> {p1:.3f}, demeaned logit change {res.logit_change(target):+.3f}"),
        html.P(["plain: ", html.Code(lm.tokenizer.decode(plain))]),
        html.P(["steered: ", html.Code(lm.tokenizer.decode(steered))], title="greedy, the real model with the "
               "features changed at their own positions in the prompt"),
        html.P(f"{time.perf_counter() - t0:.2f} s", className="note"),
    ]  # fmt: skip
    return out


def register(app: Dash, env: Env) -> None:
    """Run button -> handle_intervene (reads the URL and the pinned list's checked items)."""
    app.callback(
        Output(Id.INTERVENE_OUT.value, "children"),
        Input(Id.INTERVENE_BUTTON.value, "n_clicks"),
        State(Id.URL.value, "search"), State(Id.PINNED_LIST.value, "value"),
        State(Id.INTERVENE_ACTION.value, "value"), State(Id.INTERVENE_FACTOR.value, "value"),
        prevent_initial_call=True,
    )(lambda _n, search_, checked, action, factor: handle_intervene(env, search_, checked, action, factor))  # fmt: skip
