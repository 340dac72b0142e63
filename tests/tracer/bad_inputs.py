"""The bad inputs the CLI is promised to survive: each one a Case (what is tried, the error it must give).

tests/tracer/test_bad_inputs.py runs every Case (exit 2, one `error:` line containing `expect`, no traceback,
nothing new or changed in the output folder); `python -m tests.tracer.bad_inputs` prints the README table
"What we promise and how it is tested", and a test checks the README's copy is the current one.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tracer.pair import sidecar_path, tensor_hash


@dataclass
class Ctx:
    """One test's world: the shared subject (read-only), its own tmp folder, a fresh copy of a good graph pair."""

    subject: Path  # model/, clt/, ct/ (circuit-tracer format), graphs/g.json + sidecar
    tmp: Path
    out: Path  # the folder outputs go to (checked unchanged)

    @property
    def graph(self) -> Path:
        return self.out / "g.json"

    def model(self, edit: Callable[[Path], object] | None = None) -> Path:
        return self._copy("model", edit)

    def clt(self, edit: Callable[[Path], object] | None = None, name: str = "clt") -> Path:
        return self._copy(name, edit)

    def _copy(self, name: str, edit: Callable[[Path], object] | None) -> Path:
        if edit is None:
            return self.subject / name
        dst = self.tmp / f"{name}-copy"
        shutil.copytree(self.subject / name, dst)
        edit(dst)
        return dst

    def trace(self, prompt: str = "the cat sat", *extra: str, model: Path | None = None,
              clt: Path | None = None) -> list[str]:  # fmt: skip
        return ["trace", prompt, "--model", str(model or self.model()), "--transcoders", str(clt or self.clt()),
                "-o", str(self.out / "new.json"), *extra]  # fmt: skip


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # the subcommand, for the table
    what: str  # the input tried, for the table
    expect: str  # a fragment of the one error line, for the table
    names: str  # the file or value the line must name: a template of the Ctx `c`, e.g. "{c.tmp}/nope" or "got -1"
    argv: Callable[[Ctx], list[str]]

    def named(self, ctx: Ctx) -> str:
        return self.names.format(c=ctx)


# input makers


def edit_json(path: Path, fn: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def edit_tensors(path: Path, fn: Callable[[dict[str, torch.Tensor]], object]) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    fn(t)
    save_file(t, str(path), metadata=meta)


def poison(t: dict[str, torch.Tensor], name_part: str) -> None:
    """One NaN and one Inf in the first float tensor whose name contains name_part."""
    k = next(k for k in sorted(t) if name_part in k and t[k].is_floating_point())
    flat = t[k].reshape(-1)
    flat[0], flat[-1] = float("nan"), float("inf")


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def huge_header(path: Path) -> None:
    path.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")


def edit_sidecar(graph: Path, fn: Callable[[dict[str, torch.Tensor], dict[str, str]], object]) -> None:
    """Change a graph's sidecar and re-record its hash in the JSON, so only the change itself is wrong."""
    side = sidecar_path(graph)
    with safe_open(str(side), framework="pt") as f:
        meta = f.metadata() or {}
    t = load_file(str(side))
    fn(t, meta)
    meta["content_hash"] = tensor_hash(t)
    save_file(t, str(side), metadata=meta)
    edit_json(graph, lambda d: d["metadata"].update(adjacency_hash=meta["content_hash"],
                                                    adjacency_size=side.stat().st_size))  # fmt: skip


CT_YAML = "model_kind: cross_layer_transcoder\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: hook_mlp_out\n"


def deep_json(depth: int = 100_000) -> str:
    return '{"schema_version": 2, "nodes": ' + "[" * depth + "]" * depth + "}"


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)  # type: ignore[operator]
    return path


def prune(ctx: Ctx, *extra: str, graph: Path | None = None) -> list[str]:
    """`tracer prune GRAPH`; a `graph` other than the good one gets a copy of its sidecar (so the graph itself is
    what is wrong)."""
    if graph is not None and graph.exists():
        shutil.copy(sidecar_path(ctx.graph), sidecar_path(graph))
    return ["prune", str(graph or ctx.graph), *extra]


SIDECAR = "{c.out}/g.adjacency.safetensors"  # the sidecar beside the graph file given


def _stale_pair(ctx: Ctx) -> list[str]:
    other = ctx.tmp / "other"
    other.mkdir()
    shutil.copy(ctx.graph, other / "g.json")
    shutil.copy(sidecar_path(ctx.graph), sidecar_path(other / "g.json"))
    edit_sidecar(other / "g.json", lambda t, m: t["activations"].mul_(2))
    shutil.copy(sidecar_path(other / "g.json"), sidecar_path(ctx.graph))  # a newer trace's sidecar, old JSON
    return prune(ctx, "--node-threshold", "0.5")


CASES: list[Case] = [
    # trace: prompts and settings
    Case("empty-prompt", "trace", "a prompt of spaces", "the prompt is empty", "'   '", lambda c: c.trace("   ")),
    Case("long-prompt", "trace", "a prompt longer than the context window", "context window is 32", "has 82 tokens",
         lambda c: c.trace("the cat " * 40)),
    Case("bad-utf8-prompt", "trace", "a prompt of invalid UTF-8 bytes", "not valid UTF-8", "byte 0xff",
         lambda c: c.trace(b"the \xff cat".decode("utf-8", "surrogateescape"))),
    Case("bos-only-prompt", "trace", "a prompt that is only the BOS token", "no tokens besides BOS", "'<s>'",
         lambda c: c.trace("<s>")),
    Case("threads", "trace", "--threads -1", "--threads must be >= 0", "got -1",
         lambda c: c.trace("the cat", "--threads", "-1")),
    Case("node-threshold", "trace", "--node-threshold 2", "node_threshold must be in [0, 1], got 2", "got 2.0",
         lambda c: c.trace("the cat", "--node-threshold", "2")),
    Case("nan-threshold", "trace", "--edge-threshold nan", "edge_threshold must be in [0, 1], got nan", "got nan",
         lambda c: c.trace("the cat", "--edge-threshold", "nan")),
    Case("batch-size", "trace", "--batch-size 0", "batch_size must be >= 1", "got 0",
         lambda c: c.trace("the cat", "--batch-size", "0")),
    # trace: outputs
    Case("out-is-dir", "trace", "-o an existing folder", "is a directory", "{c.out}",
         lambda c: c.trace("the cat")[:-2] + ["-o", str(c.out)]),
    Case("out-trailing-slash", "trace", "-o DIR/ (a folder name)", "must be named NAME.json", "{c.out}/sub",
         lambda c: c.trace("the cat")[:-2] + ["-o", str(c.out / "sub") + "/"]),
    Case("out-parent-file", "trace", "-o under a parent that is a file", "is a file, not a folder",
         "{c.tmp}/f.txt/g.json",
         lambda c: c.trace("the cat")[:-2] + ["-o", str(write(c.tmp / "f.txt", "x") / "g.json")]),
    # trace: models
    Case("model-missing", "trace", "--model that does not exist", "does not exist", "{c.tmp}/nope",
         lambda c: c.trace(model=c.tmp / "nope")),
    Case("model-no-config", "trace", "a model folder without config.json", "has no config.json", "{c.tmp}/model-copy",
         lambda c: c.trace(model=c.model(lambda d: (d / "config.json").unlink()))),
    Case("model-bad-config", "trace", "config.json that is not JSON", "config.json is not valid JSON",
         "{c.tmp}/model-copy/config.json",
         lambda c: c.trace(model=c.model(lambda d: write(d / "config.json", "{oops")))),
    Case("model-hidden-size", "trace", "config.json whose hidden_size disagrees with the weights",
         "weights do not fit the config", "{c.tmp}/model-copy", lambda c: c.trace(model=c.model(
             lambda d: edit_json(d / "config.json", lambda j: j.update(hidden_size=24))))),
    Case("model-huge-layers", "trace", "config.json claiming 10⁹ layers", "says 1000000000 layers, the weights have 3",
         "{c.tmp}/model-copy/config.json", lambda c: c.trace(model=c.model(lambda d: edit_json(
             d / "config.json", lambda j: j.update(num_hidden_layers=10**9))))),
    Case("model-truncated", "trace", "truncated model.safetensors", "model-copy/model.safetensors",
         "{c.tmp}/model-copy/model.safetensors", lambda c: c.trace(model=c.model(
             lambda d: truncate(d / "model.safetensors")))),
    Case("model-huge-header", "trace", "model.safetensors whose header claims 2⁶⁰ bytes", "cannot read weights",
         "{c.tmp}/model-copy/model.safetensors", lambda c: c.trace(model=c.model(
             lambda d: huge_header(d / "model.safetensors")))),
    Case("model-nan", "trace", "NaN and Inf in a layer-1 down_proj", "tensor blocks.1.mlp.down.weight has a non-finite",
         "{c.tmp}/model-copy", lambda c: c.trace(model=c.model(lambda d: edit_tensors(
             d / "model.safetensors", lambda t: poison(t, "layers.1.mlp.down"))))),
    Case("gguf-junk", "trace", "a .gguf file of junk bytes", "junk.gguf", "{c.tmp}/junk.gguf",
         lambda c: c.trace(model=write(c.tmp / "junk.gguf", b"GGUF" + bytes(range(256)) * 4))),
    # trace: transcoders
    Case("clt-missing", "trace", "--transcoders that does not exist", "does not exist", "{c.tmp}/nope",
         lambda c: c.trace(clt=c.tmp / "nope")),
    Case("clt-mismatch", "trace", "transcoders of another model (d_model 8)", "d_model 8", "{c.subject}/wrong",
         lambda c: c.trace(clt=c.clt(name="wrong"))),
    Case("clt-nan", "trace", "NaN and Inf in a transcoder encoder", "tensor W_enc has a non-finite value",
         "{c.tmp}/clt-copy", lambda c: c.trace(clt=c.clt(lambda d: edit_tensors(
             d / "encoder.safetensors", lambda t: poison(t, "W_enc"))))),
    Case("clt-truncated", "trace", "truncated decoder.safetensors", "decoder.safetensors",
         "{c.tmp}/clt-copy/decoder.safetensors", lambda c: c.trace(clt=c.clt(
             lambda d: truncate(d / "decoder.safetensors")))),
    Case("clt-huge-shape", "trace", "a transcoder config claiming 10⁹ features", "expected (3, 1000000000",
         "{c.tmp}/clt-copy/encoder.safetensors", lambda c: c.trace(clt=c.clt(lambda d: edit_json(
             d / "config.json", lambda j: j.update(n_features=10**9))))),
    Case("ct-yaml-not-utf8", "trace", "circuit-tracer config.yaml that is not UTF-8", "config.yaml",
         "{c.tmp}/ct-copy/config.yaml", lambda c: c.trace(clt=c.clt(
             lambda d: write(d / "config.yaml", b"model_kind: \xff\xfe\n"), name="ct"))),
    Case("ct-yaml-extra", "trace", "circuit-tracer config.yaml whose clt_tracer is not a mapping",
         "clt_tracer is not a mapping", "{c.tmp}/ct-copy/config.yaml", lambda c: c.trace(clt=c.clt(
             lambda d: write(d / "config.yaml", CT_YAML + "clt_tracer: 5\n"), name="ct"))),
    # prune: graph files
    Case("graph-missing", "prune", "a graph file that does not exist", "graph file not found", "{c.out}/missing.json",
         lambda c: prune(c, graph=c.out / "missing.json")),
    Case("graph-not-json", "prune", "a graph file that is not JSON", "not valid JSON", "{c.out}/bad.json",
         lambda c: prune(c, graph=write(c.out / "bad.json", "{not json"))),
    Case("graph-deep", "prune", "a graph file nested 100 000 levels deep", "nested too deeply", "{c.out}/deep.json",
         lambda c: prune(c, graph=write(c.out / "deep.json", deep_json()))),
    Case("graph-v1-types", "prune", "a v1 graph file whose nodes and edges have the wrong types",
         "not a valid graph file", "{c.out}/v1.json", lambda c: prune(c, graph=write(c.out / "v1.json", json.dumps(
             {"schema_version": 1, "nodes": 5, "edges": [{"target": [1], "weight": "x"}]})))),
    Case("graph-dangling-edge", "prune", "a graph file with an edge to a node it lacks", "which is not among",
         "{c.graph}", lambda c: (edit_json(c.graph, lambda d: d["edges"][0].update(target="F9.9@9")), prune(c))[1]),
    Case("sidecar-missing", "prune", "a graph whose sidecar is missing", "adjacency sidecar not found", SIDECAR,
         lambda c: (sidecar_path(c.graph).unlink(), prune(c))[1]),
    Case("sidecar-junk", "prune", "a sidecar of junk bytes", "corrupt adjacency sidecar", SIDECAR,
         lambda c: (write(sidecar_path(c.graph), b"\x00" * 64), prune(c))[1]),
    Case("sidecar-stale", "prune", "a sidecar from another trace beside the JSON (killed write)",
         "does not belong to g.json", SIDECAR, _stale_pair),
    Case("sidecar-outside", "prune", "metadata.adjacency_file naming ../ a file outside the folder",
         "must name a file in the graph's own folder", "{c.graph}", lambda c: (edit_json(
             c.graph, lambda d: d["metadata"].update(adjacency_file="../g.adjacency.safetensors")), prune(c))[1]),
    Case("sidecar-nan", "prune", "NaN in a sidecar's activations", "tensor activations has a non-finite value",
         SIDECAR, lambda c: (edit_sidecar(c.graph, lambda t, m: t["activations"].view(-1).__setitem__(
             0, float("nan"))), prune(c))[1]),
    Case("sidecar-meta-type", "prune", "sidecar metadata of the wrong type (token_strs a number)", "wrong type",
         SIDECAR, lambda c: (edit_sidecar(c.graph, lambda t, m: m.update(token_strs="5")), prune(c))[1]),
    Case("sidecar-huge-layout", "prune", "a sidecar whose layout claims 10⁹ layers", "g.adjacency.safetensors",
         SIDECAR, lambda c: (edit_sidecar(c.graph, lambda t, m: t.update(
             {"layout.n_layers": torch.tensor(10**9)})), prune(c))[1]),
    Case("prune-threshold", "prune", "--node-threshold -0.1", "node_threshold must be in [0, 1]", "got -0.1",
         lambda c: prune(c, "--node-threshold", "-0.1")),
    Case("prune-out-dir", "prune", "-o an existing folder", "is a directory", "{c.tmp}",
         lambda c: prune(c, "-o", str(c.tmp))),
    Case("prune-out-parent-file", "prune", "-o under a parent that is a file", "is a file, not a folder",
         "{c.tmp}/f.txt/g.json", lambda c: prune(c, "-o", str(write(c.tmp / "f.txt", "x") / "g.json"))),
    # export
    Case("graphml-out-dir", "export", "--to graphml -o an existing folder", "is a directory", "{c.tmp}",
         lambda c: ["export", str(c.graph), "--to", "graphml", "-o", str(c.tmp)]),
    Case("neuronpedia-out-file", "export", "--to neuronpedia -o a file", "is a file, not a folder", "{c.tmp}/f.txt",
         lambda c: ["export", str(c.graph), "--to", "neuronpedia", "-o", str(write(c.tmp / "f.txt", "x"))]),
    Case("export-dangling", "export", "--to neuronpedia of a graph with a dangling edge", "which is not among",
         "{c.graph}", lambda c: (edit_json(c.graph, lambda d: d["edges"][0].update(source="F9.9@9")),
                                 ["export", str(c.graph), "--to", "neuronpedia", "-o", str(c.tmp / "np")])[1]),
    # view
    Case("view-port-range", "view", "--port 99999", "--port must be in 1..65535", "got 99999",
         lambda c: ["view", str(c.graph), "--port", "99999"]),
    Case("view-missing", "view", "a graph folder that does not exist", "no such graph file or folder", "{c.tmp}/nope",
         lambda c: ["view", str(c.tmp / "nope")]),
]  # fmt: skip


def table() -> str:
    """The README table: one row per Case."""
    rows = ["| command | input tried | behaviour (exit 2, one line) |", "|---|---|---|"]
    rows += [f"| `{c.command}` | {c.what} | `error: …{c.expect}…` |" for c in CASES]
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
