"""Export a feature store as circuit-tracer / Neuronpedia feature files: one JSON per feature, `{index}.json`.

Fields (circuit-tracer's `frontend/feature_models.py` Model): `transcoder_id`, `index` (the Cantor pair of
(layer, feature), as the feature nodes of our Neuronpedia graph export name them), `examples_quantiles`
(`{quantile_name, examples: [{tokens, tokens_acts_list, train_token_ind, is_repeated_datapoint}]}`, top
activations first), `top_logits` / `bottom_logits` (token strings), `act_min` (the weakest shown peak), `act_max`,
`quantile_values`, `histogram` (bin counts as floats) and `activation_frequency`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tracer.export import cantor_pair
from tracer.features.store import FeatureInfo, FeatureStoreDB
from tracer.io import atomic_write_text

QUANTILE_NAMES = {"top": "Top activations"}


def feature_json(info: FeatureInfo, transcoder_id: str) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in info.contexts:
        groups.setdefault(QUANTILE_NAMES.get(c.band, c.band), []).append({
            "tokens": c.tokens, "tokens_acts_list": [round(a, 4) for a in c.acts], "train_token_ind": c.peak,
            "is_repeated_datapoint": False})  # fmt: skip
    peaks = [c.peak_act for c in info.contexts]
    return {
        "transcoder_id": transcoder_id, "index": cantor_pair(info.layer, info.feature),
        "examples_quantiles": [{"quantile_name": k, "examples": v} for k, v in groups.items()],
        "top_logits": [t for t, _ in info.top_logits], "bottom_logits": [t for t, _ in info.bottom_logits],
        "act_min": round(min(peaks, default=0.0), 4), "act_max": round(info.act_max, 4),
        "quantile_values": [v for _, v in info.quantiles], "histogram": [float(c) for c in info.histogram[1]],
        "activation_frequency": info.frequency,
    }  # fmt: skip


def export_neuronpedia(db: FeatureStoreDB, out: Path, transcoder_id: str,
                       ids: list[tuple[int, int]] | None = None) -> int:  # fmt: skip
    """Write the files (atomically, each) into `out`; ids None = every feature that fires. Returns the count."""
    if ids is None:
        ids = [(int(a), int(b)) for a, b in db.con.execute(
            "SELECT layer, feature FROM features WHERE n_fires > 0 ORDER BY layer, feature")]  # fmt: skip
    for layer, feat in ids:  # check every id before writing anything
        db.check_feature(layer, feat)
    out.mkdir(parents=True, exist_ok=True)
    for layer, feat in ids:
        doc = feature_json(db.describe(layer, feat), transcoder_id)
        atomic_write_text(out / f"{doc['index']}.json", json.dumps(doc))
    return len(ids)
