"""A tiny traceable subject on disk for the CLI tests: a seeded Llama-style HF model with a BPE tokenizer trained on
a few sentences (`ROOT/model`), its random CLT in our format (`ROOT/clt`) and a CLT for a narrower model
(`ROOT/wrong`, for mismatch errors)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTok
from tokenizers import models, pre_tokenizers, trainers

from tests.conftest import random_model, tiny_config
from tests.tracer.test_attribution import random_transcoder
from tracer.models import HookPoint, save_hf
from transcoders import Transcoder, TranscoderKind, save_transcoders

TEXT = ["the cat sat on the mat", "the dog ate the bone", "a cat and a dog", "on the mat sat a dog"] * 20


def write_subject(root: Path) -> Transcoder:
    """Write the subject under `root`; returns its CLT (fp32)."""
    tok = HFTok(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # type: ignore[assignment]
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>"]))
    cfg = tiny_config("llama", vocab_size=tok.get_vocab_size(), bos_token_id=1, eos_token_id=1)
    model = random_model(cfg, dtype=torch.float32)
    save_hf(cfg, model.state_dict(), root / "model")
    tok.save(str(root / "model" / "tokenizer.json"))
    tc = random_transcoder(model, TranscoderKind.CLT, HookPoint.MLP_IN, False).float()
    save_transcoders(tc, root / "clt")
    wrong = random_transcoder(random_model(tiny_config("llama", d_model=8, n_heads=2, n_kv_heads=1)),
                              TranscoderKind.CLT, HookPoint.MLP_IN, False).float()  # fmt: skip
    save_transcoders(wrong, root / "wrong")
    return tc
