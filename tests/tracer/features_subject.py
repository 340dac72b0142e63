"""A tiny model + CLT with one planted feature, for the feature-store tests.

Word-level tokenizer; attention outputs zeroed, so layer 0's MLP input is the normalised token embedding; neither
the MLPs nor the random features' decoders write e0 or e1.
The embeddings of " France" and " Paris" are 4·e0 and 4·e1; no other token has a component along e0 or e1. The
planted feature PLANTED = (0, 3) reads dimension 0 (threshold 1: it fires on " France" and nowhere else) and its decoder
writes dimension 1 to every output layer, so its logit lens says " Paris". The other features are random.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTok
from tokenizers import models, pre_tokenizers

from tracer.models import HookPoint, ModelConfig, Tokenizer, Transformer, save_hf
from tracer.models.config import MlpKind, NormKind, PosKind
from transcoders import Transcoder, TranscoderConfig, TranscoderKind, save_transcoders

PLANTED = (0, 3)
WORDS = ["the", "a", "city", "river", "is", "of", "and", "big", "old", "in", "to", "was", "green", "map", "road"]
VOCAB = ["<s>", "<unk>", "France", "Paris", *WORDS]
FRANCE, PARIS = 2, 3


def tokenizer() -> Tokenizer:
    tok = HFTok(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # type: ignore[assignment]
    return Tokenizer(tok, 0)


def model() -> Transformer:
    cfg = ModelConfig(family="llama", n_layers=2, d_model=16, n_heads=2, d_mlp=32, vocab_size=len(VOCAB), n_ctx=32,
                      norm=NormKind.RMSNORM, mlp=MlpKind.SWIGLU, pos=PosKind.ROPE, bos_token_id=0)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    m = Transformer(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not name.endswith("weight") or "ln" in name or "norm" in name:
                continue
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        for b in m.blocks:
            b.attn.o.weight.zero_()  # type: ignore[union-attr]
            b.mlp.down.weight[:2] = 0  # type: ignore[union-attr,index]  # MLPs never write e0 or e1
        E = m.embed.weight
        E[:, :2] = 0
        E[FRANCE] = 0
        E[PARIS] = 0
        E[FRANCE, 0] = 4.0
        E[PARIS, 1] = 4.0
    return m.requires_grad_(False).eval()


def transcoder(m: Transformer, n_features: int = 8) -> Transcoder:
    cfg = TranscoderConfig(kind=TranscoderKind.CLT, n_layers=2, d_model=16, n_features=n_features,
                           input_hook=HookPoint.MLP_IN, skip=False)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    tc = Transcoder(cfg)
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn(tc.W_enc.shape, generator=g))
        tc.W_enc[:, :, :2] = 0  # the random features ignore the planted dimensions
        assert tc.theta is not None and tc.W_dec is not None
        tc.theta.fill_(2.0)
        for s in range(2):
            tc.W_dec[s].copy_(0.1 * torch.randn(tc.W_dec[s].shape, generator=g))
            tc.W_dec[s][:, :, :2] = 0
        layer, f = PLANTED
        tc.W_enc[layer, f] = 0
        tc.W_enc[layer, f, 0] = 1.0
        tc.theta[layer, f] = 1.0
        tc.W_dec[layer][f] = 0
        tc.W_dec[layer][f, :, 1] = 1.0
    return tc.requires_grad_(False)


def corpus(path: Path, n_lines: int = 300, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
        if rng.random() < 0.25:
            words.insert(rng.randrange(len(words)), "France")
        lines.append(" ".join(words))
    path.write_text("\n".join(lines) + "\n")
    return path


def save_subject(root: Path) -> tuple[Path, Path, Path]:
    """(model dir with tokenizer.json, transcoder dir, corpus file) under root."""
    m = model()
    save_hf(m.cfg, m.state_dict(), root / "model")
    tokenizer().inner.save(str(root / "model" / "tokenizer.json"))
    save_transcoders(transcoder(m), root / "clt")
    return root / "model", root / "clt", corpus(root / "corpus.txt")
