"""Byte-level BPE tokenizer for the bundled model (the `tokenizers` library, GPT-2 style, no prefix space).

Algorithm:
1. Train a byte-level BPE of `vocab_size` entries on the natural training text plus planted training text,
   plus each planted answer word (" Kabul") repeated `boost` times, so that rare capitals, names and
   induction words become single tokens too (their merges cost a few hundred vocabulary entries).
2. `<|endoftext|>` (id 0) separates documents; it is also BOS and EOS.
3. Check: every planted answer word with a leading space (" Paris") should encode to exactly one token;
   `check_single_tokens` returns those that do not.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from tracer.errors import ModelLoadError

EOT = "<|endoftext|>"


class SingleTokenCheck(NamedTuple):
    n_words: int
    multi_token: dict[str, list[str]]  # word -> its pieces, for the words that are not one token


# ---- 1-2. train -------------------------------------------------------------------------------------------
def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, boost_words: Iterable[str] = (), boost: int = 2000
) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    boosted = ((" " + w) * boost for w in sorted(set(boost_words)))
    tok.train_from_iterator(itertools.chain(texts, boosted), trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    from tracer.io import atomic_write_text

    atomic_write_text(path, tok.to_str())


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise ModelLoadError(f"the tokenizer has no {EOT} token")
    return i


# ---- 3. check ---------------------------------------------------------------------------------------------
def check_single_tokens(tok: Tokenizer, words: Iterable[str]) -> SingleTokenCheck:
    words = sorted(set(words))
    multi = {}
    for w in words:
        pieces = tok.encode(" " + w).tokens
        if len(pieces) != 1:
            multi[w] = pieces
    return SingleTokenCheck(len(words), multi)
