"""A tiny model + CLT with one planted feature, for the feature-store tests.

Word-level tokenizer; attention outputs zeroed, so layer 0's MLP input is the normalised token embedding; neither
the MLPs nor the random features' decoders write e0 or e1.
The embeddings of " France" and " Paris" are 4·e0 and 4·e1; no other token has a component along e0 or e1. The
planted feature PLANTED = (0, 3) reads dimension 0 (threshold 1: it fires on " France" and nowhere else) and its decoder
writes dimension 1 to every output layer, so its logit lens says " Paris". The other features are random.

The variant (`model(variant=True)`, `transcoder(m, variant=True)`) makes activations depend on the context and the
logit lens depend on the final norm's gain and on every output layer: attention writes (except e0 and e1), the norm
gains are random in [0.5, 1.5] but the final norm's gain is FINAL_GAIN on e0 and e1, the encoder biases are random
(0 for PLANTED), and PLANTED writes e1 to layer 0 and 0.5·e0 to layer 1, so by hand its lens is
" France" 0.5·3·4 = 6 and " Paris" 1·0.5·4 = 2 (every other token 0), but " Paris" first without the gain and
" Paris" alone with the layer-0 decoder only.
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
FINAL_GAIN = (3.0, 0.5)  # the variant's final-norm gain on e0 and e1


def tokenizer() -> Tokenizer:
    tok = HFTok(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # type: ignore[assignment]
    return Tokenizer(tok, 0)


def model(variant: bool = False) -> Transformer:
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
            b.attn.o.weight[: 2 if variant else None] = 0  # type: ignore[union-attr,index]
            b.mlp.down.weight[:2] = 0  # type: ignore[union-attr,index]  # MLPs never write e0 or e1
        E = m.embed.weight
        E[:, :2] = 0
        E[FRANCE] = 0
        E[PARIS] = 0
        E[FRANCE, 0] = 4.0
        E[PARIS, 1] = 4.0
        if variant:
            gv = torch.Generator().manual_seed(2)
            for name, p in m.named_parameters():
                if "ln" in name:
                    p.copy_(0.5 + torch.rand(p.shape, generator=gv))
            m.ln_f.weight[:2] = torch.tensor(FINAL_GAIN)
    return m.requires_grad_(False).eval()


def transcoder(m: Transformer, n_features: int = 8, variant: bool = False) -> Transcoder:
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
        if variant:
            tc.b_enc.copy_(0.3 * torch.randn(tc.b_enc.shape, generator=torch.Generator().manual_seed(3)))
            tc.b_enc[layer, f] = 0.0
            tc.W_dec[layer][f, 1] = 0
            tc.W_dec[layer][f, 1, 0] = 0.5
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
