"""The corpus of a feature build as one token stream: a text file (.txt/.txt.gz/.md), a folder of them, or a JSONL
file of texts (one JSON object with a "text" field, or one JSON string, per line). Checked before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tracer.errors import ConfigError
from tracer.models import Tokenizer
from transcoders.data import DEFAULT_CORPUS, corpus_files, tokenize_corpus


def check_corpus(path: Path | None) -> Path:
    """The corpus path (default: the bundled sample); ConfigError if it is missing or empty."""
    path = Path(path) if path is not None else DEFAULT_CORPUS
    files = corpus_files(path)  # ConfigError when missing, or a folder without text files
    if all(f.stat().st_size == 0 for f in files):
        raise ConfigError(f"corpus {path} is empty")
    return path


def _jsonl_texts(path: Path) -> list[str]:
    texts = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n} is not JSON ({e.msg})") from None
            text = obj.get("text") if isinstance(obj, dict) else obj
            if not isinstance(text, str):
                raise ConfigError(f"{path}:{n} has no string \"text\" field")
            texts.append(text)
    return texts


def corpus_stream(tokenizer: Tokenizer, path: Path, max_tokens: int, separator: int | None) -> torch.Tensor:
    """[N] int32 token ids of the corpus, at most max_tokens; JSONL documents are separated by `separator`."""
    if path.is_file() and path.suffix == ".jsonl":
        out, n = [], 0
        for text in _jsonl_texts(path):
            ids = tokenizer.encode(text) + ([separator] if separator is not None else [])
            out += ids
            n += len(ids)
            if n >= max_tokens:
                break
        if not out:
            raise ConfigError(f"corpus {path} holds no text")
        return torch.tensor(out[:max_tokens], dtype=torch.int32)
    return tokenize_corpus(tokenizer, path, max_tokens)
