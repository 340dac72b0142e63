"""One trace pipeline for `tracer trace` and batch tracing: load once, then prompt -> graph file + sidecar.

1. load (`Tracer.from_args`): model (dtype/device from tracer.precision), transcoders (the model's dtype, decoders
   lazy), their identities; the trace settings, as one TraceConfig.
2. trace (`Tracer.trace_to`): tokenize, attribute, prune, build the graph file, add the feature store's labels;
3. save (in the same call): graph + sidecar as one unit (tracer.pair), the sidecar as the options ask, written in a
   background thread from the end of attribution on (disk I/O beside pruning and the graph file).
Each step's phases are added to the `timings` dict it is given (seconds, the names `tracer trace` prints).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tracer.schema import GraphFile, Identity

if TYPE_CHECKING:
    import torch

    from tracer.attribute import TraceConfig
    from tracer.models import LoadedModel
    from tracer.result import Attribution
    from transcoders import Transcoder


def trace_config(args: argparse.Namespace, progress: bool) -> TraceConfig:
    """The TraceConfig of `tracer trace`'s options (`--row-dtype auto`: bf16 rows for a bf16 model)."""
    from tracer.attribute import TraceConfig

    row_dtype = args.row_dtype if args.row_dtype != "auto" else ("bf16" if args.model_dtype == "bf16" else "fp32")
    return TraceConfig(
        max_n_logits=args.max_n_logits, desired_logit_prob=args.desired_logit_prob, batch_size=args.batch_size,
        max_feature_nodes=args.max_feature_nodes, edge_topk=args.edge_topk, target=tuple(args.target or ()),
        minus=args.minus, kernel=args.kernel, progress=progress, row_dtype=row_dtype,
    )  # fmt: skip


@dataclass
class Tracer:
    """A loaded model and transcoder set with one run's settings."""

    lm: LoadedModel
    tc: Transcoder
    model_id: Identity
    tc_id: Identity
    cfg: TraceConfig
    node_threshold: float
    edge_threshold: float
    tc_dir: Path
    device: torch.device | None = None
    sidecar: bool = True
    sidecar_fp16: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # load phases; trace phases go to trace()'s dict

    @classmethod
    def from_args(cls, args: argparse.Namespace, progress: bool = False) -> Tracer:
        """1. load (phases model_load, transcoder_load)."""
        from tracer.attribute import phase
        from tracer.errors import ModelLoadError
        from tracer.hub import resolve_transcoders
        from tracer.models import load_model
        from tracer.models.loading import file_hash
        from tracer.precision import resolve_precision
        from transcoders import DEFAULT_TRANSCODERS, load_transcoders

        cfg, prec, t = trace_config(args, progress), resolve_precision(args), {}
        with phase("model_load", t):
            lm = load_model(args.model, dtype=prec.dtype)
            lm.model.to(prec.device)
        with phase("transcoder_load", t):
            # in the model's dtype: fp16 storage would otherwise round the replacement model away from exactness
            tc_dir = Path(resolve_transcoders(args.transcoders) or DEFAULT_TRANSCODERS)
            tc = load_transcoders(tc_dir, lm.cfg, dtype=lm.model.embed.weight.dtype, lazy=True).to(prec.device)
            tc_id = Identity(name=tc_dir.name, content_hash=file_hash(sorted(tc_dir.glob("*.safetensors"))),
                             kind=str(tc.cfg.kind.value))  # fmt: skip
        if lm.tokenizer is None:
            raise ModelLoadError("the model has no tokenizer (tokenizer.json or vocab.json + merges.txt)")
        model_id = Identity(name=lm.name, content_hash=lm.content_hash, kind=lm.cfg.family)
        return cls(lm, tc, model_id, tc_id, cfg, args.node_threshold, args.edge_threshold, tc_dir, prec.device,
                   sidecar=not args.no_sidecar, sidecar_fp16=args.sidecar_dtype == "fp16", timings=t)  # fmt: skip

    @property
    def settings(self) -> dict:
        s = {k: v for k, v in asdict(self.cfg).items() if k != "progress"}
        return s | {"node_threshold": self.node_threshold, "edge_threshold": self.edge_threshold,
                    "target": list(self.cfg.target)}  # fmt: skip

    def trace_to(self, path: Path, prompt: str, timings: dict[str, float] | None = None,
                 ) -> tuple[GraphFile, Attribution]:  # fmt: skip
        """2 and 3: trace, and save as `path`: the sidecar (unless --no-sidecar) is written by a background thread
        (tracer.pair.start_save: disk I/O) while the graph is pruned and built; the phase `write` is the time spent
        starting the save and finishing it (waiting for the sidecar, the JSON, the renames)."""
        import torch

        from tracer.attribute import phase
        from tracer.pair import start_save

        t = {} if timings is None else timings
        attr = self._attribute(prompt, t)
        t0 = time.perf_counter()
        dtype = torch.float16 if self.sidecar_fp16 else torch.float32
        pending = start_save(path, attr if self.sidecar else None, values_dtype=dtype)
        started = time.perf_counter() - t0
        try:
            graph = self._graph(prompt, attr, t)
        except BaseException:
            pending.cancel()
            raise
        t["write"] = started  # printed after graph_file, where the save ends
        with phase("write", t):
            pending.finish(graph)
        return graph, attr

    def _attribute(self, prompt: str, t: dict[str, float]) -> Attribution:
        import torch

        from tracer.attribute import attribute, phase

        lm = self.lm
        assert lm.tokenizer is not None  # checked in from_args
        with phase("tokenize", t):
            tokens = torch.tensor(lm.tokenizer.encode_prompt(prompt, lm.cfg.n_ctx, lm.cfg.bos_token_id),
                                  device=self.device)  # fmt: skip
        with torch.inference_mode(False):
            attr = attribute(lm.model, self.tc, tokens, lm.tokenizer, self.cfg)
        t |= attr.timings
        return attr

    def _graph(self, prompt: str, attr: Attribution, t: dict[str, float]) -> GraphFile:
        from tracer.attribute import phase
        from tracer.features.graph_labels import label_graph
        from tracer.graphfile import build_graph_file
        from tracer.prune import prune

        with phase("prune", t):
            pruned = prune(attr, node_threshold=self.node_threshold, edge_threshold=self.edge_threshold)
        with phase("graph_file", t):
            graph = build_graph_file(attr, pruned, prompt=prompt, model=self.model_id, transcoders=self.tc_id,
                                     settings=self.settings, labels=None)  # fmt: skip
            label_graph(graph, self.tc_dir)  # automatic labels from the feature store beside the transcoders, if any
        return graph
