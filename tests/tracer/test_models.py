"""Runtime parity with `transformers` and hook-point semantics."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from tracer.errors import ModelLoadError, PromptError
from tracer.models import HookPoint, Site, all_sites, load_model, save_hf

PROMPTS = [[1, 5, 9, 3, 7, 2, 8], [1, 4], [1, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]]

FAMILIES = {
    "gpt2": (transformers.GPT2Config, dict(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=97)),
    "llama": (transformers.LlamaConfig, dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=48, vocab_size=97, max_position_embeddings=64,
              tie_word_embeddings=False)),
    "llama3": (transformers.LlamaConfig, dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
               num_key_value_heads=1, intermediate_size=48, vocab_size=97, max_position_embeddings=64,
               rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
               high_freq_factor=4.0, original_max_position_embeddings=16))),
    "qwen2": (transformers.Qwen2Config, dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=48, vocab_size=97, max_position_embeddings=64)),
    "qwen3": (transformers.Qwen3Config, dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, intermediate_size=48, vocab_size=97, max_position_embeddings=64)),
    "mistral": (transformers.MistralConfig, dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=48, vocab_size=97, max_position_embeddings=64,
                sliding_window=5)),
    # small soft-caps, a short window and a query scalar != head_dim so that every Gemma detail shows in the logits
    "gemma2": (transformers.Gemma2Config, dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, intermediate_size=48, vocab_size=97, max_position_embeddings=64,
               sliding_window=3, query_pre_attn_scalar=10, attn_logit_softcapping=2.0, final_logit_softcapping=3.0)),
    "gemma3": (transformers.Gemma3TextConfig, dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, intermediate_size=48, vocab_size=97, max_position_embeddings=64,
               sliding_window=3, query_pre_attn_scalar=12,
               layer_types=["sliding_attention", "full_attention", "sliding_attention"],
               rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 37.0}})),
}  # fmt: skip


def _hf_model(family: str, tmp_path):
    cls, kw = FAMILIES[family]
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cls(**kw))
    with torch.no_grad():  # perturb norm weights and biases so their placement matters
        for name, p in hf.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf.eval().save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family, tmp_path):
    hf = _hf_model(family, tmp_path)
    ours = load_model(tmp_path).model
    for prompt in PROMPTS:
        tokens = torch.tensor([prompt])
        with torch.no_grad():
            expected = hf(tokens).logits
        torch.testing.assert_close(ours(tokens), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "gemma3"])
def test_save_roundtrip(family, tmp_path):
    _hf_model(family, tmp_path / "a")
    loaded = load_model(tmp_path / "a")
    save_hf(loaded.cfg, loaded.model.state_dict(), tmp_path / "b")
    again = load_model(tmp_path / "b").model
    tokens = torch.tensor([PROMPTS[0]])
    torch.testing.assert_close(again(tokens), loaded.model(tokens), atol=0, rtol=0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    torch.testing.assert_close(hf(tokens).logits, loaded.model(tokens), atol=1e-4, rtol=0)


def test_cache_every_hook_and_patch_changes_downstream_exactly(tiny_model):
    tokens = torch.tensor([[1, 3, 5, 7, 9]])
    model = tiny_model
    with model.hooks.capture(all_sites(model.cfg.n_layers)) as cache:
        logits = model(tokens)
    assert len(cache) == len(all_sites(model.cfg.n_layers))
    torch.testing.assert_close(cache[Site(HookPoint.LOGITS)], logits)
    for layer in range(model.cfg.n_layers):  # residual bookkeeping must add up at every layer
        pre, mid, post = (cache[Site(p, layer)] for p in (HookPoint.RESID_PRE, HookPoint.RESID_MID,
                                                           HookPoint.RESID_POST))  # fmt: skip
        torch.testing.assert_close(mid, pre + cache[Site(HookPoint.ATTN_OUT, layer)])
        torch.testing.assert_close(post, mid + cache[Site(HookPoint.MLP_OUT, layer)])
        blk = model.blocks[layer]
        torch.testing.assert_close(cache[Site(HookPoint.MLP_OUT, layer)], blk.mlp(cache[Site(HookPoint.MLP_IN, layer)]))
        torch.testing.assert_close(cache[Site(HookPoint.LN2_SCALE, layer)], blk.ln2.scale(mid))
    # Adding delta to the MLP output at layer 1, position 2 adds exactly delta to resid_post there, and to
    # nothing before position 2 anywhere.
    delta = torch.randn(model.cfg.d_model, dtype=torch.float64)

    def add(x):
        x = x.clone()
        x[0, 2] += delta
        return x

    with model.hooks.attached({Site(HookPoint.MLP_OUT, 1): add}), model.hooks.capture(all_sites(3)) as patched:
        model(tokens)
    post1, post2 = Site(HookPoint.RESID_POST, 1), Site(HookPoint.RESID_POST, 2)
    torch.testing.assert_close(patched[post1][0, 2], cache[post1][0, 2] + delta)
    torch.testing.assert_close(patched[post2][0, :2], cache[post2][0, :2])
    torch.testing.assert_close(patched[Site(HookPoint.RESID_PRE, 1)], cache[Site(HookPoint.RESID_PRE, 1)])
    assert not torch.allclose(patched[Site(HookPoint.LOGITS)][0, 2:], cache[Site(HookPoint.LOGITS)][0, 2:])
    assert not model.hooks.active  # context managers removed everything


def test_hooks_removed_on_error(tiny_model):
    with pytest.raises(RuntimeError), tiny_model.hooks.attached({Site(HookPoint.MLP_OUT, 0): lambda x: None}):
        raise RuntimeError("boom")
    assert not tiny_model.hooks.active


def test_frozen_pattern_replaces_value(tiny_model):
    tokens = torch.tensor([[1, 3, 5, 7]])
    uniform = torch.tril(torch.ones(4, 4, dtype=torch.float64))
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand(1, tiny_model.cfg.n_heads, 4, 4)
    with tiny_model.hooks.attached({Site(HookPoint.ATTN_PATTERN, 0): lambda p: uniform}), \
            tiny_model.hooks.capture([Site(HookPoint.ATTN_OUT, 0), Site(HookPoint.RESID_PRE, 0)]) as c:
        tiny_model(tokens)
    blk = tiny_model.blocks[0]
    x = c[Site(HookPoint.RESID_PRE, 0)]
    xn = blk.ln1.normalize(x, blk.ln1.scale(x))
    torch.testing.assert_close(c[Site(HookPoint.ATTN_OUT, 0)], blk.attn.mix(uniform, xn))


def test_bad_inputs(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="unsupported architecture 'bert'; supported: gpt2"):
        load_model(tmp_path)
    _hf_model("llama", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(tmp_path)


def test_prompt_errors():
    from tokenizers import Tokenizer as HFTok
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from tracer.models import Tokenizer

    inner = HFTok(WordLevel({"<s>": 0, "a": 1, "b": 2, "[UNK]": 3}, unk_token="[UNK]"))
    inner.pre_tokenizer = Whitespace()  # type: ignore[assignment]
    tok = Tokenizer(inner, bos_id=0)
    assert tok.encode_prompt("a b a", n_ctx=8) == [0, 1, 2, 1]
    with pytest.raises(PromptError, match="empty"):
        tok.encode_prompt("  ", n_ctx=8)
    with pytest.raises(PromptError, match="context window is 3"):
        tok.encode_prompt("a b a", n_ctx=3)


@pytest.mark.parametrize("style", ["gpt2", "llama", "gemma2"])
def test_ln2_normalized_is_before_the_weight(style):
    """LN2_NORMALIZED is TransformerLens's `ln2.hook_normalized`: (x - mean) / std for LayerNorm, x / rms(x) for
    RMSNorm, computed by hand from resid_mid; MLP_IN is that times the norm's weight (Gemma: 1 + w) plus bias."""
    from tests.conftest import random_model, tiny_config

    model = random_model(tiny_config(style))
    sites = [Site(p, 1) for p in (HookPoint.RESID_MID, HookPoint.LN2_NORMALIZED, HookPoint.MLP_IN)]
    with model.hooks.capture(sites) as c:
        model(torch.tensor([[1, 3, 5, 7, 9]]))
    x = c[sites[0]]
    eps = model.cfg.norm_eps
    if style == "gpt2":
        xc = x - x.mean(-1, keepdim=True)
        hand = xc / (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    else:
        hand = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    torch.testing.assert_close(c[sites[1]], hand, atol=1e-12, rtol=0)
    ln2 = model.block(1).ln2
    w = ln2.weight + (1.0 if style == "gemma2" else 0.0)
    assert (w - 1).abs().min() > 1e-3  # weights away from 1, so the two hooks differ
    after = hand * w + (ln2.bias if ln2.bias is not None else 0)
    torch.testing.assert_close(c[sites[2]], after, atol=1e-12, rtol=0)


def test_gemma3_multimodal_checkpoint_loads_its_language_model(tmp_path):
    """A Gemma-3 multimodal config (text_config nested, decoder under model.language_model.) gives the same model
    as the text-only checkpoint it was made from."""
    from safetensors.torch import load_file, save_file

    _hf_model("gemma3", tmp_path / "text")
    text = load_model(tmp_path / "text").model
    cfg = json.loads((tmp_path / "text" / "config.json").read_text())
    (tmp_path / "mm").mkdir()
    (tmp_path / "mm" / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": cfg,
                                                             "vision_config": {"hidden_size": 8}}))  # fmt: skip
    sd = load_file(str(tmp_path / "text" / "model.safetensors"))
    sd = {k.replace("model.", "model.language_model.", 1): v for k, v in sd.items()}
    sd["model.vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(8, 3, 2, 2)
    save_file(sd, str(tmp_path / "mm" / "model.safetensors"))
    mm = load_model(tmp_path / "mm").model
    tokens = torch.tensor([PROMPTS[2]])
    assert mm.cfg.family == "gemma3" and mm.cfg.local_layers == text.cfg.local_layers
    torch.testing.assert_close(mm(tokens), text(tokens), atol=0, rtol=0)
