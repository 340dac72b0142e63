"""Browser-side callback code (JavaScript strings for Dash clientside callbacks), with component ids filled in.

1. INSTALL_LISTENERS (once per page): remember Ctrl/Cmd on mousedown (pin instead of select); a click on any element
   carrying NODE_ATTR becomes a CLICK_EVENT; Escape becomes a KEY_EVENT.
2. GRAPH_CLICK: a main-graph click -> CLICK_EVENT {id, pin, t}.
   GRAPH_HOVER: the hovered main-graph node id (null when the pointer leaves) once the pointer has rested on it
   150 ms, only when it changes (a pointer crossing the graph, or a click, asks the server for nothing).
3. SYNC_AXES: keep the overlay figure (edges, rings) on the main figure's axis ranges through zoom and pan.
4. FIT_SUBGRAPH: after the pinned nodes change, re-measure the cytoscape box and fit them in it.
"""

from __future__ import annotations

from viewer.ids import NODE_ATTR, Id


def _js(code: str) -> str:
    """Fill `{{NAME}}` placeholders with ids (JS braces need no escaping this way)."""
    names = {"ATTR": NODE_ATTR, "CLICK": Id.CLICK_EVENT.value, "KEY": Id.KEY_EVENT.value, "MAIN": Id.MAIN_GRAPH.value,
             "OVERLAY": Id.OVERLAY_GRAPH.value, "SUBGRAPH": Id.SUBGRAPH.value, "HOVER": Id.HOVER_EVENT.value,
             "HOVER_DELAY": "150"}  # fmt: skip
    for name, value in names.items():
        code = code.replace("{{" + name + "}}", value)
    return code


INSTALL_LISTENERS = _js("""
function(_) {
    if (!window.__tracerListeners) {
        window.__tracerListeners = true;
        window.__tracerPin = false;
        document.addEventListener('mousedown', e => { window.__tracerPin = e.ctrlKey || e.metaKey; }, true);
        document.addEventListener('click', e => {
            const row = e.target.closest('[{{ATTR}}]');
            if (row) {
                const event = {id: row.getAttribute('{{ATTR}}'), pin: e.ctrlKey || e.metaKey, t: Date.now()};
                dash_clientside.set_props('{{CLICK}}', {data: event});
            }
        });
        document.addEventListener('keydown', e => {
            if (e.key === 'Escape') {
                dash_clientside.set_props('{{KEY}}', {data: {key: 'Escape', t: Date.now()}});
            }
        });
    }
    return dash_clientside.no_update;
}""")

GRAPH_CLICK = _js("""
function(cd) {
    clearTimeout(window.__tracerHoverTimer);  // a click is not a hover
    const p = cd && cd.points && cd.points[0];
    if (!p || typeof p.customdata !== 'string') { return dash_clientside.no_update; }
    return {id: p.customdata, pin: !!window.__tracerPin, t: Date.now()};
}""")

GRAPH_HOVER = _js("""
function(hd) {
    const p = hd && hd.points && hd.points[0];
    const id = p && typeof p.customdata === 'string' ? p.customdata : null;
    clearTimeout(window.__tracerHoverTimer);  // only a pointer that rests on a node asks the server for edges
    window.__tracerHoverTimer = setTimeout(() => {
        if (id !== (window.__tracerHover === undefined ? null : window.__tracerHover)) {
            window.__tracerHover = id;
            dash_clientside.set_props('{{HOVER}}', {data: id});
        }
    }, id === null ? 0 : {{HOVER_DELAY}});
    return dash_clientside.no_update;
}""")

SYNC_AXES = _js("""
function(_main, _overlay) {
    const find = id => document.querySelector('#' + id + ' .js-plotly-plot');
    const sync = () => {
        const m = find('{{MAIN}}'), o = find('{{OVERLAY}}');
        if (!m || !o || !m._fullLayout || !o._fullLayout || !m._fullLayout.xaxis) { return; }
        const mx = m._fullLayout.xaxis.range, my = m._fullLayout.yaxis.range;
        const ox = o._fullLayout.xaxis.range, oy = o._fullLayout.yaxis.range;
        if (mx[0] !== ox[0] || mx[1] !== ox[1] || my[0] !== oy[0] || my[1] !== oy[1]) {
            Plotly.relayout(o, {'xaxis.range': mx.slice(), 'yaxis.range': my.slice()});
        }
    };
    setTimeout(() => {  // after dcc.Graph has drawn both figures
        const m = find('{{MAIN}}'), o = find('{{OVERLAY}}');
        if (m && m.on && !m.__tracerSync) {
            m.__tracerSync = true;
            m.on('plotly_relayouting', sync);
            m.on('plotly_relayout', sync);
        }
        if (o && o.on && !o.__tracerSync) {  // a server update of the overlay resets its ranges
            o.__tracerSync = true;
            o.on('plotly_afterplot', sync);
        }
        sync();
    }, 0);
    return dash_clientside.no_update;
}""")

FIT_SUBGRAPH = _js("""
function(_elements) {
    setTimeout(() => {  // the box may just have become visible: measure it again, then fit the pinned nodes
        const reg = document.getElementById('{{SUBGRAPH}}')._cyreg;
        if (reg && reg.cy) { reg.cy.resize(); reg.cy.fit(undefined, 30); }
    }, 50);
    return dash_clientside.no_update;
}""")
