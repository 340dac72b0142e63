"""`tracer features build | show | search | export`: the feature store from the command line.

1. build: check the corpus and output, load model + transcoders, stream (tracer.features.build), print a summary.
2. show L/IDX... | --graph G: the terminal dashboard (label, frequency, logit effects, contexts with the firing
   tokens in [brackets]); --graph shows a graph's most influential features.
3. search TEXT: features ranked by label, top tokens and context text.
4. export --to neuronpedia -o DIR: one circuit-tracer feature JSON per feature (tracer.features.export).
The store defaults to the one beside the transcoders (default: the bundled CLT), whose content hash it must match.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tracer.precision import add_precision_args

DEFAULT_TOKENS = 1_000_000
SPARK = "▁▂▃▄▅▆▇█"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="build, show, search and export a feature store (dashboards, labels)")
    fs = p.add_subparsers(dest="features_command", required=True)
    b = fs.add_parser("build", help="stream the model over a corpus and write the feature store (resumable)")
    _store_args(b, "store to write (default: features.sqlite beside the transcoders)")
    b.add_argument("--model", type=Path, help="HF-layout model directory or .gguf file (default: bundled model)")
    b.add_argument("--corpus", type=Path, help="text file, folder of text files, or JSONL of texts "
                   "(default: the bundled corpus sample)")  # fmt: skip
    b.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="corpus tokens to stream")
    b.add_argument("--seq-len", type=int, default=128, help="tokens per sequence incl. BOS (≤ the model's context)")
    b.add_argument("--batch-seqs", type=int, default=16, help="sequences per forward pass")
    b.add_argument("--top-k", type=int, default=10, help="top-activating contexts kept per feature")
    b.add_argument("--seed", type=int, default=0, help="seed of the lower-quantile example sample")
    b.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    add_precision_args(b)
    b.add_argument("--checkpoint-seconds", type=float, default=60.0, help="seconds between resumable checkpoints")
    b.add_argument("--overwrite", action="store_true", help="replace an existing store instead of resuming it")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    s = fs.add_parser("show", help="print the dashboard of features, e.g. `tracer features show 1/42`")
    s.add_argument("feature", nargs="*", help="feature id LAYER/INDEX (also F1.42 as in graph node ids)")
    s.add_argument("--graph", type=Path, help="show the most influential features of this graph file")
    s.add_argument("--top", type=int, default=3, help="with --graph: how many features")
    _store_args(s, "store to read (default: the one beside the transcoders)")
    s.add_argument("--contexts", type=int, default=6, help="top contexts printed")
    s.add_argument("--samples", type=int, default=3, help="sampled contexts printed per lower-quantile band")
    s.add_argument("--json", action="store_true", help="print every field as JSON")
    q = fs.add_parser("search", help="find features by label, top tokens and context text")
    q.add_argument("text", help="what to look for, e.g. a token like Paris")
    _store_args(q, "store to read (default: the one beside the transcoders)")
    q.add_argument("--limit", type=int, default=20, help="most results")
    q.add_argument("--json", action="store_true", help="print the hits as JSON")
    e = fs.add_parser("export", help="write circuit-tracer / Neuronpedia feature JSON files")
    e.add_argument("--to", choices=["neuronpedia"], default="neuronpedia", help="target format")
    e.add_argument("-o", "--output", type=Path, required=True, help="folder to write (one JSON per feature)")
    e.add_argument("--features", nargs="*", help="feature ids to export (default: every feature that fires)")
    e.add_argument("--transcoder-id", help="transcoder_id field (default: the transcoders' name)")
    _store_args(e, "store to read (default: the one beside the transcoders)")
    for sp in (b, s, q, e):
        sp.set_defaults(func=run)


def _store_args(p: argparse.ArgumentParser, store_help: str) -> None:
    p.add_argument("--transcoders", type=Path, help="transcoder directory (default: bundled CLT)")
    p.add_argument("--store", "-s", type=Path, help=store_help)


def _tc_dir(args: argparse.Namespace) -> Path:
    from transcoders import DEFAULT_TRANSCODERS

    return Path(args.transcoders or DEFAULT_TRANSCODERS)


def transcoders_hash(tc_dir: Path) -> str:
    """The transcoders' content hash, as graph metadata records it."""
    from tracer.errors import TranscoderLoadError
    from tracer.models.loading import file_hash

    files = sorted(tc_dir.glob("*.safetensors"))
    if not files:
        raise TranscoderLoadError(f"transcoder directory {tc_dir} has no .safetensors files")
    return file_hash(files)


def open_for_args(args: argparse.Namespace):
    """The store named by --store (checked against --transcoders when given), else the one beside the
    transcoders (checked against them)."""
    from tracer.features import open_store, store_path

    if args.store is not None:
        return open_store(args.store, transcoders_hash(args.transcoders) if args.transcoders else None)
    tc = _tc_dir(args)
    return open_store(store_path(tc), transcoders_hash(tc))


def run(args: argparse.Namespace) -> int:
    return {"build": run_build, "show": run_show, "search": run_search,
            "export": run_export}[args.features_command](args)  # fmt: skip


def run_build(args: argparse.Namespace) -> int:
    import torch

    from tracer.errors import ConfigError, ModelLoadError
    from tracer.features import store_path
    from tracer.features.build import BuildConfig, build_store
    from tracer.features.corpus import check_corpus, corpus_stream
    from tracer.models import load_model
    from tracer.precision import resolve_precision
    from transcoders import load_transcoders

    cfg = BuildConfig(tokens=args.tokens, seq_len=args.seq_len, batch_seqs=args.batch_seqs, top_k=args.top_k,
                      seed=args.seed, checkpoint_seconds=args.checkpoint_seconds)  # fmt: skip
    corpus = check_corpus(args.corpus)
    tc_dir = _tc_dir(args)
    out = Path(args.store or store_path(tc_dir))
    if out.exists() and not out.is_file():
        raise ConfigError(f"output {out} is not a file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the folder of {out}: {e.strerror}") from None
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"cannot write {out} (permission denied); choose another place with -s STORE")
    if args.threads:
        torch.set_num_threads(args.threads)
    prec = resolve_precision(args)
    lm = load_model(args.model, dtype=prec.dtype)
    lm.model.to(prec.device)
    if lm.tokenizer is None:
        raise ModelLoadError("the model has no tokenizer (tokenizer.json or vocab.json + merges.txt)")
    tc = load_transcoders(tc_dir, lm.cfg, dtype=torch.float32).to(prec.device)  # activations kept in fp32
    stream = corpus_stream(lm.tokenizer, corpus, args.tokens + args.tokens // 8, lm.cfg.eos_token_id)
    identity = {"model": {"name": lm.name, "content_hash": lm.content_hash},
                "transcoders": {"name": tc_dir.name, "content_hash": transcoders_hash(tc_dir),
                                "kind": tc.cfg.kind.value},
                "corpus": corpus.name}  # fmt: skip
    res = build_store(lm.model, tc, lm.tokenizer, stream, out, identity, cfg, overwrite=args.overwrite,
                      progress=not args.json)  # fmt: skip
    size = out.stat().st_size
    summary = {"store": str(out), "tokens": res.n_tokens, "seconds": round(res.seconds, 2),
               "tokens_per_s": round(res.tokens_per_s), "resumed_from_batch": res.resumed_from,
               "size_bytes": size, "timings": {k: round(v, 3) for k, v in res.timings.items()}}  # fmt: skip
    if args.json:
        print(json.dumps(summary))
    elif res.resumed_from < 0:
        print(f"{out} is already complete for these transcoders, corpus and settings (--overwrite rebuilds it)")
    else:
        print(f"feature store: {out} ({size / 1e6:.1f} MB), {res.n_tokens:,} tokens in {res.seconds:.0f} s "
              f"({res.tokens_per_s:,.0f} tokens/s)" + (f", resumed at batch {res.resumed_from}"
                                                       if res.resumed_from else ""))  # fmt: skip
    return 0


def _tok(t: str) -> str:
    return t.replace("\n", "↵").replace("\t", "⇥")


def _spark(counts: list[int]) -> str:
    top = max(counts, default=0) or 1
    return "".join(SPARK[min(7, round(7 * c / top))] if c else " " for c in counts)


def format_info(info, n_contexts: int = 6, n_samples: int = 3) -> str:
    """The terminal dashboard of one FeatureInfo."""
    head = f"feature {info.layer}/{info.feature}"
    lab = f'"{info.label}" ({info.label_rule}, confidence {info.label_confidence:.2f})' if info.label else "(none)"
    lines = [f"{head}  label: {lab}"]
    if info.n_fires == 0:
        return "\n".join([*lines, "never fired on the store's corpus"])
    edges = info.histogram[0]
    lines += [
        f"fires on {info.frequency:.4%} of tokens ({info.n_fires:,}); mean {info.mean:.3g}, max {info.act_max:.3g}",
        "quantiles: " + " · ".join(f"{q:.0%} {v:.3g}" for q, v in info.quantiles),
        f"histogram 0–{edges[-1]:.3g}: |{_spark(info.histogram[1])}|",
    ]
    for name, items in (("top output tokens", info.top_logits), ("bottom output tokens", info.bottom_logits),
                        ("top input tokens", info.top_inputs)):  # fmt: skip
        lines.append(f"{name + ':':22}" + ", ".join(f"{_tok(t)!r} {v:+.2f}" for t, v in items[:8]))
    band = None
    shown: dict[str, int] = {}
    for c in info.contexts:
        if shown.get(c.band, 0) >= (n_contexts if c.band == "top" else n_samples):
            continue
        shown[c.band] = shown.get(c.band, 0) + 1
        if c.band != band:
            band = c.band
            lines.append(f"{'top contexts' if band == 'top' else 'sampled, ' + band}:")
        text = "".join(f"[{_tok(t)}]" if a > 0 else _tok(t) for t, a in zip(c.tokens, c.acts, strict=True))
        lines.append(f"  {c.peak_act:6.3f}  {text}")
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    from tracer.features.store import FeatureStoreError, parse_feature_id

    ids = [parse_feature_id(f) for f in args.feature]
    if args.graph is not None:
        from tracer.features.graph_labels import top_features
        from tracer.graphfile import load_graph

        ids += [(d["layer"], d["feature"]) for d in top_features(load_graph(args.graph), args.top)]
    if not ids:
        raise FeatureStoreError("name features to show (LAYER/INDEX) or a graph (--graph FILE)")
    db = open_for_args(args)
    infos = [db.describe(layer, feat) for layer, feat in ids]
    if args.json:
        print(json.dumps([i.to_json() for i in infos] if len(infos) > 1 else infos[0].to_json()))
    else:
        print("\n\n".join(format_info(i, args.contexts, args.samples) for i in infos))
    return 0


def run_search(args: argparse.Namespace) -> int:
    db = open_for_args(args)
    hits = db.search(args.text, args.limit)
    if args.json:
        print(json.dumps([h._asdict() for h in hits]))
        return 0
    if not hits:
        print(f"no feature matches {args.text!r}")
    for h in hits:
        print(f"{h.layer}/{h.feature:<6} {h.score:5.2f}  {h.label}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from tracer.features.export import export_neuronpedia
    from tracer.features.store import parse_feature_id

    db = open_for_args(args)
    ids = [parse_feature_id(f) for f in args.features] if args.features else None
    tid = args.transcoder_id or db.provenance["transcoders"]["name"]
    n = export_neuronpedia(db, args.output, tid, ids)
    print(f"wrote {n} feature files to {args.output}")
    return 0
