"""Training data: transcoder inputs and targets harvested from the model over a text corpus.

1. Corpus: a text file (`.txt` or `.txt.gz`) or a folder of them (sorted, recursive), tokenised once up to the
   number of tokens needed; the default is the bundled sample.
2. Sequences: sequence j is BOS + the next seq_len-1 tokens from position j·(seq_len-1) of the stream (wrapping
   around), so any buffer can be rebuilt from its index alone (exact resume).
3. Harvest: run the model in batches, capture the input hook and MLP_OUT of every layer with
   `model.hooks.capture`, drop position 0 (BOS: huge norm, zeroed in attribution anyway); each batch is stored in
   the buffer's dtype (fp16 by default) as it comes, so a buffer never exists in fp32; tqdm shows tokens/s.
   With a layer subset (`--layers`) only those layers are kept: buffers shrink by L_subset / L.
4. Buffer i: the tokens of its sequences, shuffled at the token level with a generator seeded by (seed, i);
   optionally stored as one safetensors shard per buffer in a cache directory and read back from there. The cache
   directory gets one subfolder per key = hash(model weights, token stream, hook, seq_len, buffer size, seed,
   dtype): shards of another model or other settings are never reused. With `n_unique` buffers of distinct data,
   buffer i reuses buffer i mod n_unique, reshuffled with (seed, i) (several epochs, cheap).
5. Sizing: `buffer_bytes` / `fit_buffer_tokens` size a buffer from the memory available (MemAvailable).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from tracer.errors import ConfigError
from tracer.io import atomic_save_safetensors, atomic_write_text
from tracer.models import HookPoint, Site, Tokenizer, Transformer

log = logging.getLogger(__name__)
DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "tracer" / "assets" / "corpus_sample.txt.gz"
TEXT_SUFFIXES = (".txt", ".txt.gz", ".md")


class Batch(NamedTuple):
    x: torch.Tensor  # transcoder inputs [T, L, D]
    y: torch.Tensor  # MLP outputs (targets) [T, L, D]


def note(msg: str, show: bool = True) -> None:
    """A one-line message on stderr for the person running a long job (and in the log)."""
    log.info(msg)
    if show:
        print(f"note: {msg}", file=sys.stderr, flush=True)


# 1. Corpus
def corpus_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
        if files:
            return files
        raise ConfigError(f"corpus folder {path} has no {', '.join(TEXT_SUFFIXES)} files")
    raise ConfigError(f"corpus {path} does not exist")


def _chunks(path: Path, chunk_chars: int = 1 << 16) -> Iterator[str]:
    """Text of a file in pieces cut at line ends (the tokenizer never sees half a line)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        while True:
            lines = f.readlines(chunk_chars)
            if not lines:
                return
            yield "".join(lines)


def _encoded(tokenizer: Tokenizer, path: Path, group: int = 16) -> Iterator[torch.Tensor]:
    """Token ids of every chunk of every file, encoded `group` chunks at a time (encode_batch runs in parallel)."""
    for f in corpus_files(path):
        pieces: list[str] = []
        for text in _chunks(f):
            pieces.append(text)
            if len(pieces) == group:
                yield from (
                    torch.tensor(e.ids, dtype=torch.int32)
                    for e in tokenizer.inner.encode_batch(pieces, add_special_tokens=False)
                )
                pieces = []
        if pieces:
            yield from (
                torch.tensor(e.ids, dtype=torch.int32)
                for e in tokenizer.inner.encode_batch(pieces, add_special_tokens=False)
            )


def tokenize_corpus(tokenizer: Tokenizer, path: Path, max_tokens: int) -> torch.Tensor:
    """The corpus as one token stream [N] (int32), stopping once max_tokens are read."""
    out: list[torch.Tensor] = []
    n = 0
    for ids in _encoded(tokenizer, path):
        out.append(ids)
        n += len(ids)
        if n >= max_tokens:
            break
    if n == 0:
        raise ConfigError(f"corpus {path} holds no text")
    return torch.cat(out)[:max_tokens]


# 2. Sequences
def sequences(stream: torch.Tensor, first: int, count: int, seq_len: int, bos: int | None) -> torch.Tensor:
    """Sequences first..first+count-1 [count, seq_len]: BOS (if any) + consecutive tokens, wrapping around."""
    body = seq_len - 1 if bos is not None else seq_len
    start = (torch.arange(first, first + count) * body)[:, None] + torch.arange(body)
    toks = stream[start % len(stream)].long()
    if bos is None:
        return toks
    return torch.cat([torch.full((count, 1), bos, dtype=torch.long), toks], 1)


# 3. Harvest
@torch.no_grad()
def harvest(model: Transformer, tokens: torch.Tensor, input_hook: HookPoint, batch_seqs: int = 16,
            dtype: torch.dtype | None = None, progress: bool = False, desc: str = "harvest",
            layers: tuple[int, ...] | None = None) -> Batch:  # fmt: skip
    """tokens [n, P] -> x, y [n·(P-1), L, D] in `dtype` (default: the model's; position 0 dropped). Each batch is
    converted as it comes, so the peak is one buffer in `dtype` plus one batch in the model's dtype. With `layers`,
    only those layers are kept (L = len(layers), in that order)."""
    L = range(model.cfg.n_layers) if layers is None else layers
    xs, ys = [], []
    sites = [Site(input_hook, layer) for layer in L] + [Site(HookPoint.MLP_OUT, layer) for layer in L]
    bar = tqdm(total=tokens.numel(), desc=desc, unit="tok", unit_scale=True, disable=not progress, leave=False)
    for i in range(0, len(tokens), batch_seqs):
        chunk = tokens[i : i + batch_seqs]
        with model.hooks.capture(sites) as cache:
            model(chunk.to(model.embed.weight.device))
        for out, point in ((xs, input_hook), (ys, HookPoint.MLP_OUT)):
            t = torch.stack([cache[Site(point, layer)][:, 1:] for layer in L], 2).flatten(0, 1)
            out.append(t.to("cpu", dtype or t.dtype))  # buffers live in host memory (training runs on the CPU)
        bar.update(chunk.numel())
    bar.close()
    return Batch(torch.cat(xs), torch.cat(ys))


# 5. Sizing
def buffer_bytes(model: Transformer, buffer_tokens: int, store_dtype: torch.dtype = torch.float16,
                 layers: tuple[int, ...] | None = None) -> int:  # fmt: skip
    """Memory of one buffer (inputs and targets of every layer, or of `layers`) stored in `store_dtype`."""
    n_layers = model.cfg.n_layers if layers is None else len(layers)
    return 2 * buffer_tokens * n_layers * model.cfg.d_model * store_dtype.itemsize


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo (elsewhere: 8 GiB, a cautious guess)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def fit_buffer_tokens(model: Transformer, wanted: int, batch_tokens: int, kept: int = 1, share: float = 0.4,
                      store_dtype: torch.dtype = torch.float16, layers: tuple[int, ...] | None = None,
                      ) -> int:  # fmt: skip
    """The largest power-of-two buffer <= wanted whose `kept` copies (plus one being shuffled) fit in `share` of the
    available memory, at least batch_tokens."""
    budget = share * available_bytes()
    n = wanted
    while n > batch_tokens and (kept + 1) * buffer_bytes(model, n, store_dtype, layers) > budget:
        n //= 2
    return max(n, batch_tokens)


def cache_key(model: Transformer, stream: torch.Tensor, parts: dict, model_hash: str = "") -> str:
    """Key of an activation cache: the model's weights (content hash, or a fingerprint of its embedding and last
    block), the token stream and every setting that changes the shards."""
    h = hashlib.sha256()
    if model_hash:
        h.update(model_hash.encode())
    else:
        for t in (model.embed.weight, *model.block(model.cfg.n_layers - 1).parameters()):
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(stream.cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


# 4. Shuffled buffers
class ActivationSource:
    """Buffer i = the harvested, token-shuffled activations of a fixed block of sequences (see module docstring)."""

    def __init__(self, model: Transformer, stream: torch.Tensor, input_hook: HookPoint, seq_len: int,
                 buffer_tokens: int, seed: int = 0, cache_dir: Path | None = None,
                 store_dtype: torch.dtype = torch.float16, n_unique: int | None = None, model_hash: str = "",
                 progress: bool = False, layers: tuple[int, ...] | None = None) -> None:  # fmt: skip
        if seq_len > model.cfg.n_ctx or seq_len < 2:
            raise ConfigError(f"seq_len {seq_len} must be in [2, {model.cfg.n_ctx}] (the model's context)")
        self.progress = progress
        if cache_dir is not None:  # one subfolder per model + settings: never another run's shards
            parts = {"hook": input_hook.value, "seq_len": seq_len, "buffer_tokens": buffer_tokens, "seed": seed,
                     "dtype": str(store_dtype), "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model}
            if layers is not None:  # only when set: a full harvest keeps the key (and the shards) it had
                parts["layers"] = list(layers)
            if model.embed.weight.dtype != torch.float32:  # --model-dtype: other values (an fp32 key is unchanged)
                parts["model_dtype"] = str(model.embed.weight.dtype)
            cache_dir = Path(cache_dir) / cache_key(model, stream, parts, model_hash)
            cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache_dir / "key.json", json.dumps(parts | {"model_hash": model_hash}, indent=2) + "\n")
            n = len(list(cache_dir.glob("shard_*.safetensors")))
            note(f"activation cache {cache_dir}: " + (f"reusing {n} shard(s)" if n else "empty, harvesting into it"),
                 progress)  # fmt: skip
        self.model, self.stream, self.input_hook = model, stream, input_hook
        self.seq_len, self.seed, self.cache_dir, self.store_dtype = seq_len, seed, cache_dir, store_dtype
        self.bos = model.cfg.bos_token_id
        self.seqs_per_buffer = max(1, math.ceil(buffer_tokens / (seq_len - 1)))
        self.buffer_tokens = self.seqs_per_buffer * (seq_len - 1)
        self.n_unique, self.layers = n_unique, layers
        self._current: tuple[int, Batch] | None = None
        self._kept: dict[int, Batch] = {}  # distinct buffers kept in memory when reused without a cache dir

    def buffer(self, i: int) -> Batch:
        if self._current is not None and self._current[0] == i:
            return self._current[1]
        if self.n_unique is None or i < self.n_unique:
            batch = self._distinct(i)
        else:
            b = self._distinct(i % self.n_unique)
            perm = torch.randperm(len(b.x), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + i))
            batch = Batch(b.x[perm], b.y[perm])
        self._current = (i, batch)
        return batch

    def _distinct(self, i: int) -> Batch:
        if i in self._kept:
            return self._kept[i]
        shard = self.cache_dir / f"shard_{i:06d}.safetensors" if self.cache_dir is not None else None
        if shard is not None and shard.exists():
            t = load_file(str(shard))
            batch = Batch(t["x"], t["y"])
        else:
            toks = sequences(self.stream, i * self.seqs_per_buffer, self.seqs_per_buffer, self.seq_len, self.bos)
            x, y = harvest(self.model, toks, self.input_hook, dtype=self.store_dtype, progress=self.progress,
                           desc=f"harvest buffer {i}", layers=self.layers)  # fmt: skip
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            perm = torch.randperm(len(x), generator=gen)
            batch = Batch(x[perm], y[perm])
            if shard is not None:
                atomic_save_safetensors({"x": batch.x, "y": batch.y}, shard)
        if self.n_unique is not None and self.cache_dir is None:
            self._kept[i] = batch
        return batch

    def batch(self, step: int, batch_tokens: int) -> Batch:
        """The float32 training batch of a step: consecutive slices of consecutive buffers."""
        per = self.buffer_tokens // batch_tokens
        if per == 0:
            raise ConfigError(f"batch of {batch_tokens} tokens exceeds the buffer of {self.buffer_tokens}")
        b = self.buffer(step // per)
        j = (step % per) * batch_tokens
        return Batch(b.x[j : j + batch_tokens].float(), b.y[j : j + batch_tokens].float())
