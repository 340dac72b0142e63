"""Batch tracing: a JSONL file of prompts -> one graph per prompt plus DIR/index.json; resumable; torchrun-sharded.

1. read: each non-blank line of the prompt file is a JSON object with a string "prompt" (and optionally a "name");
   a line that is not JSON, not an object, or has no prompt becomes a failed entry with its line number.
2. plan: file name `NNNN-slug.json` (NNNN: the line number) or the line's own name; the settings of the run.
   A prompt whose graph and sidecar exist with the same prompt, model, transcoders and settings is skipped (its
   index entry is read from the file).
3. shard: under `torchrun --nproc-per-node N` rank r takes prompts r, r+N, ...; model and transcoders load once per
   rank. Without torchrun one process takes them all.
4. trace: each prompt as `tracer trace` does it (attribute, prune, graph + sidecar written atomically); a prompt's
   TracerError (empty, over-long, bad target) is recorded in its entry and the batch goes on.
5. index: the entries are gathered on rank 0, which writes index.json atomically, in line order.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from tracer.errors import ConfigError, GraphFileError, OutputError, TracerError
from tracer.io import atomic_write_text
from tracer.pipeline import Tracer
from tracer.schema import GraphFile, Identity, Scores

log = logging.getLogger("tracer.batch")
INDEX_NAME = "index.json"
INDEX_FORMAT = "clt-tracer batch index v1"


class Entry(BaseModel):
    """One line of the prompt file and what became of it."""

    line: int = Field(description="1-based line number in the prompt file")
    prompt: str = ""
    file: str | None = Field(default=None, description="graph file name inside the index's folder")
    status: str = Field(description="traced, skipped (graph already there with the same settings) or failed")
    error: str = ""
    top_logits: list[dict] = Field(default_factory=list, description="[{token, probability}], most likely first")
    scores: Scores | None = None
    pruned_scores: Scores | None = None
    n_nodes: int = 0
    n_edges: int = 0
    n_nodes_unpruned: int = 0
    n_edges_unpruned: int = 0
    seconds: float = 0.0


class BatchIndex(BaseModel):
    format: str = INDEX_FORMAT
    prompts_file: str
    model: Identity | None = None
    transcoders: Identity | None = None
    settings: dict = Field(default_factory=dict)
    world_size: int = 1
    entries: list[Entry]

    def ok(self) -> list[Entry]:
        return [e for e in self.entries if e.file is not None and e.status != "failed"]


class PromptLine(BaseModel):
    line: int
    prompt: str
    name: str


# 1. read


def read_prompts(path: Path) -> tuple[list[PromptLine], list[Entry]]:
    """The prompt file's usable lines, and a failed entry for each unusable one."""
    from tracer.trace_cli import slug

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read prompt file {path}: {e}") from None
    good, bad, names = [], [], set()
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            bad.append(Entry(line=i, status="failed", error=f"line {i} is not JSON ({e.msg})"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            what = 'has no string "prompt"' if isinstance(obj, dict) else "is not a JSON object"
            bad.append(Entry(line=i, status="failed", error=f"line {i} {what}"))
            continue
        name = slug(obj["name"]) if isinstance(obj.get("name"), str) else f"{i:04d}-{slug(obj['prompt'])}"
        if name in names:
            bad.append(Entry(line=i, prompt=obj["prompt"], status="failed", error=f"line {i}: duplicate name {name}"))
            continue
        names.add(name)
        good.append(PromptLine(line=i, prompt=obj["prompt"], name=name))
    if not good and not bad:
        raise ConfigError(f"prompt file {path} has no prompts")
    return good, bad


# 2. plan


NOT_SETTINGS = ("feature_store",)  # recorded in settings by the trace, not chosen by the user


def _normal(settings: dict) -> str:
    return json.dumps({k: v for k, v in json.loads(json.dumps(settings)).items() if k not in NOT_SETTINGS},
                      sort_keys=True)  # fmt: skip


def entry_of(graph: GraphFile, line: int, file: str, status: str, seconds: float = 0.0) -> Entry:
    """The index entry of a written graph."""
    from tracer.layout import NodeKind

    logits = sorted((n for n in graph.nodes if n.kind == NodeKind.LOGIT), key=lambda n: -(n.probability or 0))
    m = graph.metadata
    return Entry(line=line, prompt=m.prompt, file=file, status=status,
                 top_logits=[{"token": n.token, "probability": n.probability} for n in logits],
                 scores=m.scores, pruned_scores=m.pruned_scores, n_nodes=len(graph.nodes), n_edges=len(graph.edges),
                 n_nodes_unpruned=m.n_nodes_unpruned, n_edges_unpruned=m.n_edges_unpruned,
                 seconds=round(seconds, 3))  # fmt: skip


def existing(path: Path, prompt: str, model: Identity, tcs: Identity, settings: dict) -> GraphFile | None:
    """The graph at `path` if it was traced from this prompt with these identities and settings (and has its
    sidecar), else None."""
    from tracer.graphfile import load_graph, sidecar_path

    if not path.exists() or not sidecar_path(path).exists():
        return None
    try:
        g = load_graph(path)
    except GraphFileError:
        return None
    m = g.metadata
    same = m.prompt == prompt and (m.model.content_hash, m.transcoders.content_hash) == (
        model.content_hash,
        tcs.content_hash,
    )
    return g if same and _normal(m.settings) == _normal(settings) else None


# 3.-4. shard and trace


def run_batch(args: argparse.Namespace) -> int:
    """`tracer trace --prompts FILE -o DIR` (see the module docstring)."""
    import torch
    from tqdm.auto import tqdm

    from tracer.distributed import init_world

    if args.prompts is None or args.prompt is not None:
        raise ConfigError("give either a prompt or --prompts FILE.jsonl (not both)")
    if args.view:
        raise ConfigError("--view opens one graph; view a batch with: tracer view DIR")
    out_dir: Path = args.output or Path("out/graphs")
    lines, failed = read_prompts(args.prompts)  # 1. before any long work
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = atomic_write_text(out_dir / f".write-test-{os.getpid()}", "")  # per process: ranks share DIR
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to output folder {out_dir}: {e}") from None
    world = init_world()
    if args.threads:
        torch.set_num_threads(args.threads)
    tracer = Tracer.from_args(args)  # model and transcoders, once per rank
    mine = [lines[i] for i in world.shard(len(lines))]  # 3.
    entries: list[Entry] = []
    bar = tqdm(total=len(mine), desc=f"prompts (rank {world.rank}/{world.size})" if world.distributed else "prompts",
               unit="prompt", disable=args.json or not world.is_main)  # fmt: skip
    for pl in mine:
        entries.append(_one(tracer, pl, out_dir))
        bar.update()
    bar.close()
    gathered = world.gather(entries)  # 5.
    if gathered is not None:
        everything = sorted([e for rank in gathered for e in rank] + failed, key=lambda e: e.line)
        index = BatchIndex(prompts_file=str(args.prompts), model=tracer.model_id, transcoders=tracer.tc_id,
                           settings=tracer.settings, world_size=world.size, entries=everything)  # fmt: skip
        write_index(out_dir / INDEX_NAME, index)
        counts = {s: sum(e.status == s for e in everything) for s in ("traced", "skipped", "failed")}
        if args.json:
            print(json.dumps({"index": str(out_dir / INDEX_NAME), **counts}))
        else:
            print(f"{counts['traced']} traced, {counts['skipped']} skipped (already there), {counts['failed']} failed"
                  f"\nindex: {out_dir / INDEX_NAME}\nview them: tracer view {out_dir}")  # fmt: skip
    world.close()
    return 0


def _one(tracer: Tracer, pl: PromptLine, out_dir: Path) -> Entry:
    """4. Trace one prompt (or skip it, or record its failure)."""
    path = out_dir / f"{pl.name}.json"
    old = existing(path, pl.prompt, tracer.model_id, tracer.tc_id, tracer.settings)
    if old is not None:
        return entry_of(old, pl.line, path.name, "skipped")
    t0 = time.perf_counter()
    try:
        graph, _ = tracer.trace_to(path, pl.prompt)
    except TracerError as e:
        if isinstance(e, OutputError):  # the output folder, not this prompt: stop the batch
            raise
        return Entry(line=pl.line, prompt=pl.prompt, status="failed", error=str(e))
    return entry_of(graph, pl.line, path.name, "traced", time.perf_counter() - t0)


# 5. index


def write_index(path: Path, index: BatchIndex) -> None:
    atomic_write_text(path, index.model_dump_json(indent=1) + "\n")


def load_index(path: Path) -> BatchIndex:
    try:
        return BatchIndex.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GraphFileError(f"index file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GraphFileError(f"cannot read index {path}: {e}") from None
    except ValidationError as e:
        raise GraphFileError(f"{path} is not a batch index ({e.error_count()} problems)") from None
