"""Tokenizer wrapper over the `tokenizers` library (tokenizer.json, GPT-2 vocab/merges, or GGUF metadata)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers.implementations import ByteLevelBPETokenizer

from tracer.errors import ModelLoadError, PromptError


@dataclass
class Tokenizer:
    """Encode text without special tokens; `bos_id` is prepended by the caller when tracing."""

    inner: HFTokenizer
    bos_id: int | None = None

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids, skip_special_tokens=False)

    def token_str(self, token_id: int) -> str:
        """Readable text of one token (byte-level BPE pieces decoded)."""
        return self.inner.decode([token_id], skip_special_tokens=False)

    def encode_prompt(self, text: str, n_ctx: int, fallback_bos: int | None = None) -> list[int]:
        """Token ids for a prompt with BOS first (the tokenizer's, else `fallback_bos`, e.g. the model config's:
        attribution needs a position 0 to drop); rejects empty or over-long prompts."""
        if not text.strip():
            raise PromptError(f"the prompt is empty: {text[:40]!r}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # undecodable argv bytes arrive as lone surrogates
            byte = ord(text[e.start]) - 0xDC00  # a lone surrogate U+DCxx stands for the undecodable byte xx
            where = f"byte {byte:#04x} at character {e.start}" if 0x80 <= byte <= 0xFF else f"at character {e.start}"
            raise PromptError(f"the prompt is not valid UTF-8 ({where})") from None
        ids = self.encode(text)
        bos = self.bos_id if self.bos_id is not None else fallback_bos
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        if bos is not None and all(i == bos for i in ids):
            raise PromptError(f"the prompt has no tokens besides BOS: {text[:40]!r}")
        if len(ids) > n_ctx:
            raise PromptError(f"the prompt has {len(ids)} tokens; the model's context window is {n_ctx}")
        return ids

    @property
    def vocab_size(self) -> int:
        return self.inner.get_vocab_size()


def load_tokenizer(path: Path, bos_id: int | None) -> Tokenizer | None:
    """tokenizer.json, or GPT-2's vocab.json + merges.txt; None when the directory has neither."""
    try:
        if (path / "tokenizer.json").exists():
            return Tokenizer(HFTokenizer.from_file(str(path / "tokenizer.json")), bos_id)
        if (path / "vocab.json").exists() and (path / "merges.txt").exists():
            bpe = ByteLevelBPETokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
            return Tokenizer(bpe._tokenizer, bos_id)  # the wrapped tokenizers.Tokenizer
    except Exception as e:  # the tokenizers library raises plain Exception on parse errors
        raise ModelLoadError(f"cannot read the tokenizer in {path}: {str(e).splitlines()[0]}") from None
    return None
