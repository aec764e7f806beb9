"""Print puyu-vs-transformers logits errors: tiny random HF models and the real SmolLM2.

    python tools/parity.py            # tiny llama / qwen2 / mistral + SmolLM2-135M-Instruct (GGUF)

The tests assert the same quantities with fixed tolerances; this prints the measured values.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from puyu_jax.models import from_flat, init_cache, to_flat  # noqa: E402
from puyu_jax.models.hf import load_hf_dir, save_hf_dir  # noqa: E402

TINY = {
    "llama (GQA 4/2)": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama (MQA, tied)": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"num_key_value_heads": 1, "tie_word_embeddings": True}),
    "qwen2 (qkv bias)": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "mistral (window 5)": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": 5}),
}


def _left_padded(rng, vocab, b=3, t=20, pads=(0, 5, 11)):
    tokens = rng.integers(0, vocab, (b, t))
    mask = np.ones((b, t), np.int64)
    for i, p in enumerate(pads):
        mask[i, :p] = 0
    return tokens, mask, np.clip(mask.cumsum(-1) - 1, 0, None)


def _hf(model, tokens, mask, pos):
    with torch.no_grad():
        return model(torch.tensor(tokens), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)).logits.numpy()


def tiny_rows(tmp: Path):
    rows = []
    for name, (cfg_cls, model_cls, extra) in TINY.items():
        torch.manual_seed(0)
        kw = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.15,
                  tie_word_embeddings=False, attn_implementation="eager") | extra
        hf = model_cls(cfg_cls(**kw)).eval()
        d = tmp / name.split()[0]
        hf.save_pretrained(d)
        cfg, flat = load_hf_dir(d)
        model = from_flat(cfg, flat)
        tokens, mask, pos = _left_padded(np.random.default_rng(0), 256)
        ref = _hf(hf, tokens, mask, pos)
        ours, _ = model(tokens, cache=init_cache(cfg, 3, 32, starts=(1 - mask).sum(-1)))
        valid = mask.astype(bool)
        err = np.abs(np.asarray(ours) - ref)[valid].max()
        save_hf_dir(cfg, {k: np.asarray(v) for k, v in to_flat(model).items()}, d / "export")
        back = model_cls.from_pretrained(d / "export", attn_implementation="eager").eval()
        err_back = np.abs(_hf(back, tokens, mask, pos) - ref)[valid].max()
        rows.append((name, f"{err:.1e}", f"{err_back:.1e}"))
    return rows


def smollm2_row():
    from puyu_jax.chat_templates import apply_chat_template
    from puyu_jax.models.gguf import find_smollm2_gguf
    from puyu_jax.pretrained import load_pretrained

    path = find_smollm2_gguf()
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    pre = load_pretrained(path)
    ids = apply_chat_template(pre.tokenizer, [{"role": "user", "content": "What is the capital of France?"}], tokenize=True)
    tokens = np.asarray([ids])
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()[0]
    ours = np.asarray(pre.model(tokens)[0])[0]
    rel = (np.linalg.norm(ours - ref, axis=-1) / np.linalg.norm(ref, axis=-1)).max()
    return rel, np.abs(ours - ref).max()


def main():
    with tempfile.TemporaryDirectory() as tmp:
        rows = tiny_rows(Path(tmp))
    print("| tiny random model (fp32, batch 3, left padding) | max abs dlogits | after export to HF |")
    print("|---|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if "--tiny-only" not in sys.argv:
        rel, abs_err = smollm2_row()
        print(f"\nSmolLM2-135M-Instruct (same GGUF, fp32): max relative logits error {rel:.1e}, max abs {abs_err:.1e}")


if __name__ == "__main__":
    main()
