"""The offline Python API, in the manner of LMDeploy's `pipeline`.

    from puyu_jax import pipeline, GenerationConfig
    pipe = pipeline("smollm2", quant="int4", kv="int8")
    pipe(["Hi", "What is JAX?"], GenerationConfig(max_new_tokens=64))
    for r in pipe.stream("Tell me a story"): print(r.text, end="")
    pipe.chat([{"role": "user", "content": "Hello"}])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from puyu_jax.serve.config import EngineConfig, GenerationConfig
from puyu_jax.serve.engine import LLMEngine
from puyu_jax.serve.outputs import RequestOutput, TokenLogprob


@dataclass
class Response:
    """One choice of one prompt (streamed responses carry the newly decoded text)."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    input_token_len: int
    generate_token_len: int
    index: int = 0
    logprobs: list[TokenLogprob] | None = None
    choices: list["Response"] = field(default_factory=list)  # all n choices when n > 1

    @classmethod
    def from_output(cls, out: RequestOutput, delta: bool = False) -> "Response":
        choices = [
            cls(c.delta_text if delta else c.text, list(c.delta_token_ids if delta else c.token_ids), c.finish_reason,
                len(out.prompt_token_ids), len(c.token_ids), c.index, c.delta_logprobs if delta else c.logprobs)
            for c in out.outputs
        ]
        first = replace(choices[0])
        first.choices = choices if len(choices) > 1 else []
        return first


def _gen(gen: GenerationConfig | None, kwargs: dict) -> GenerationConfig:
    gen = gen or GenerationConfig()
    return replace(gen, **kwargs) if kwargs else gen


class Pipeline:
    """Generation over an `LLMEngine` with prompts as text, token ids or chat messages."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.tokenizer = engine.tokenizer

    def __call__(self, prompts: str | Sequence[str] | Sequence[Sequence[int]], gen: GenerationConfig | None = None,
                 *, progress: bool = False, **gen_kwargs) -> Response | list[Response]:
        """Generates for one prompt (returns a Response) or a list (returns a list)."""
        single = isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], int))
        batch = [prompts] if single else list(prompts)
        outs = self.engine.generate(batch, _gen(gen, gen_kwargs), progress=progress)
        responses = [Response.from_output(o) for o in outs]
        return responses[0] if single else responses

    def stream(self, prompt: str | Sequence[int], gen: GenerationConfig | None = None, **gen_kwargs) -> Iterator[Response]:
        """Yields responses holding the text decoded since the previous one."""
        rid = self.engine.add_request(None, prompt, _gen(gen, gen_kwargs))
        try:
            while True:
                for out in self.engine.step():
                    if out.request_id != rid:
                        continue
                    r = Response.from_output(out, delta=True)
                    if r.text or r.token_ids or out.finished:
                        yield r
                    if out.finished:
                        return
        finally:
            if rid in self.engine.groups:
                self.engine.abort_request(rid)

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of messages rendered with the model's chat template (generation prompt added)."""
        from puyu_jax.chat_templates import apply_chat_template

        if self.tokenizer is None:
            raise ValueError("chat needs a tokenizer")
        return apply_chat_template(self.tokenizer, messages, add_generation_prompt=True, tools=tools, tokenize=True)

    def chat(self, messages: list[dict] | list[list[dict]], gen: GenerationConfig | None = None, *,
             stream: bool = False, **gen_kwargs):
        """Answers one conversation (or a list of them) with the chat template applied."""
        if stream:
            return self.stream(self.encode_chat(messages), gen, **gen_kwargs)
        if messages and isinstance(messages[0], dict):
            return self(self.encode_chat(messages), gen, **gen_kwargs)
        return self([self.encode_chat(m) for m in messages], gen, **gen_kwargs)

    def score(self, token_ids: Sequence[int]) -> np.ndarray:
        """Log-probs of token_ids[1:] through the paged KV cache (with the engine's KV dtype)."""
        return self.engine.score(token_ids)


def pipeline(model, tokenizer=None, *, quant: str | None = None, kv: str | None = None, tp: int = 1,
             engine_config: EngineConfig | None = None, **engine_kwargs) -> Pipeline:
    """Builds a generation pipeline.

    Args:
      model: a source `puyu_jax.pretrained.load_pretrained` accepts ("smollm2", a .gguf,
        a puyu or HF directory, a config name) or a Transformer instance.
      tokenizer: the tokenizer when `model` is an instance.
      quant: None, "int4" (weight-only, group 128; RTN on load unless already quantized) or
        "native" (a GGUF's Q4_0 / Q4_1 / Q8_0 tensors as they are, no float copy).
      kv: None, "int8" or "int4" (KV cache with per-token, per-head scales; int4 with zero points).
      tp: tensor-parallel degree.
      engine_config / engine_kwargs: further `EngineConfig` fields.
    """
    cfg = engine_config or EngineConfig()
    updates = dict(engine_kwargs)
    if quant:
        updates["quant"] = quant
    if kv:
        updates["kv_dtype"] = kv
    if tp != 1:
        updates["tp"] = tp
    cfg = replace(cfg, **updates)
    if isinstance(model, str):
        engine = LLMEngine.from_pretrained(model, cfg)
    else:
        engine = LLMEngine(model, tokenizer, cfg)
    return Pipeline(engine)
