"""`puyu generate`: one generation run (prompts in, texts out) on the serving engine.

Generation has one path in this package: `LLMEngine` / `pipeline` (paged KV cache,
continuous batching, the engine's sampler and detokenizer). This module only turns a
typed run config into a pipeline call, so it is also a sweep run kind (`run: generate`).
How tokens are chosen is a `GenerationConfig` (the same one the pipeline, the server
and the agents take).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from puyu_jax.serve.config import EngineConfig, GenerationConfig


@dataclass(frozen=True)
class GenerateRunConfig:
    """One `puyu generate` run (also a sweep run kind: `run: generate`)."""

    model: str = "smollm2"  # see puyu_jax.pretrained for the accepted sources
    prompts: tuple[str, ...] = ("What is the capital of France?",)
    chat: bool = True  # wrap each prompt as a user turn in the model's chat template
    system: str = ""  # optional system message (chat mode)
    sampling: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=64))
    dtype: str = "float32"


def encode_prompt(tokenizer, text: str, *, chat: bool, system: str = "") -> list[int]:
    """Token ids for a prompt, through the chat template when `chat`."""
    if not chat:
        return tokenizer.encode(text)
    from puyu_jax.chat_templates import apply_chat_template

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return apply_chat_template(tokenizer, messages, add_generation_prompt=True, tokenize=True)


def pool_blocks(lengths: list[int], max_new_tokens: int, block_size: int = 16) -> int:
    """KV blocks a pool needs to hold every prompt + its new tokens at once (plus the null block)."""
    return 1 + sum(-(-(n + max_new_tokens) // block_size) for n in lengths)


def run_generate(cfg: GenerateRunConfig, out_dir=None, *, on_text: Callable[[str], None] | None = None) -> dict:
    """Loads the model, generates for every prompt through the engine and returns metrics.

    With one prompt and `on_text`, text is streamed to `on_text` as it is decoded.
    Writes `outputs.jsonl` into `out_dir` when given.
    """
    from puyu_jax.pretrained import load_pretrained
    from puyu_jax.serve.pipeline import pipeline

    t0 = time.perf_counter()
    pre = load_pretrained(cfg.model, dtype=cfg.dtype)
    if pre.tokenizer is None:
        raise ValueError(f"model {cfg.model!r} has no tokenizer; generate needs one")
    load_s = time.perf_counter() - t0
    tok = pre.tokenizer
    ids = [encode_prompt(tok, p, chat=cfg.chat, system=cfg.system) for p in cfg.prompts]
    gen = cfg.sampling
    engine_cfg = EngineConfig(dtype=cfg.dtype, max_num_seqs=max(1, min(len(ids) * gen.n, 64)),
                              num_blocks=pool_blocks([len(i) for i in ids] * gen.n, gen.max_new_tokens))
    pipe = pipeline(pre.model, tok, engine_config=engine_cfg)
    t0 = time.perf_counter()
    if on_text is not None and len(ids) == 1:
        token_ids: list[int] = []
        parts: list[str] = []
        for r in pipe.stream(ids[0], gen):
            on_text(r.text)
            parts.append(r.text)
            token_ids += r.token_ids
        outs = [(token_ids, "".join(parts))]
        metrics_of = None
    else:
        responses = pipe.engine.generate(ids, gen)
        outs = [(list(o.outputs[0].token_ids), o.outputs[0].text) for o in responses]
        metrics_of = [o.metrics for o in responses]
        if on_text is not None:
            for p, (_, t) in zip(cfg.prompts, outs):
                on_text(f"### {p}\n{t}\n")
    total_s = time.perf_counter() - t0
    new_tokens = sum(len(o) for o, _ in outs)
    metrics = {"load_s": round(load_s, 3), "prompt_tokens": sum(len(i) for i in ids), "new_tokens": new_tokens,
               "generate_s": round(total_s, 3), "output_tok_s": round(new_tokens / total_s, 3) if total_s else 0.0}
    if metrics_of:
        ttft = [m.ttft for m in metrics_of if m.ttft is not None]
        metrics["ttft_s"] = round(max(ttft), 3) if ttft else None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "outputs.jsonl", "w") as f:
            for p, (o, t) in zip(cfg.prompts, outs):
                f.write(json.dumps({"prompt": p, "token_ids": o, "text": t}, ensure_ascii=False) + "\n")
    metrics["text_0"] = outs[0][1][:80]
    return metrics


_DEPRECATED = {"GenerateConfig": ("GenerateRunConfig", GenerateRunConfig),
               "SamplingConfig": ("GenerationConfig", GenerationConfig)}


def __getattr__(name: str):
    if name in _DEPRECATED:
        new, value = _DEPRECATED[name]
        warnings.warn(f"puyu_jax.generate.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
        return value
    raise AttributeError(f"module 'puyu_jax.generate' has no attribute {name!r}")


def _register() -> None:
    from puyu_jax.sweep import register_run

    register_run("generate", GenerateRunConfig, lambda cfg, out_dir: run_generate(cfg, out_dir))


_register()
