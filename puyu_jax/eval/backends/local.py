"""A puyu model in-process, on the serving engine: batched log-likelihood scoring and
batched generation.

Scoring requests are prompts the engine prefills and scores as it goes (`LLMEngine.score_batch`):
the scheduler packs them into prefill steps up to its token budget, and the prefix cache
computes a context shared by several continuations (the options of one question) once.
So that it can, the first continuation of each context goes first, and the others once it
is in the cache. Generation is `LLMEngine.generate` with greedy decoding and stop strings.
"""

from __future__ import annotations

from collections.abc import Sequence

from puyu_jax.eval.backends import Score, truncate_at
from puyu_jax.serve.config import EngineConfig, GenerationConfig


class LocalBackend:
    """A puyu `Transformer` + tokenizer as an eval backend, run by an `LLMEngine`.

    Args:
      model, tokenizer: from `load_pretrained`.
      batch_size: sequences per engine step at most (scoring and generation).
      max_seq_len: prompts are cut from the left to fit.
      token_budget: prompt tokens per engine step at most.
      name: identity in the prediction cache (use the model source).
      engine_config: further engine settings (pool size, quantization, KV dtype); its
        max_num_seqs / max_num_batched_tokens / max_model_len are taken from the arguments above.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 32, max_seq_len: int = 2048, token_budget: int = 2048,
                 name: str = "local", engine_config: EngineConfig | None = None):
        from dataclasses import replace

        from puyu_jax.serve.engine import LLMEngine

        if tokenizer is None:
            raise ValueError("the local eval backend needs a model with a tokenizer")
        self.model, self.tokenizer = model, tokenizer
        self.max_seq_len = min(max_seq_len, model.cfg.max_position_embeddings)
        cfg = replace(engine_config or EngineConfig(kv_cache_memory_gb=1.0), max_num_seqs=batch_size,
                      max_num_batched_tokens=max(token_budget, 16), max_model_len=self.max_seq_len)
        self.engine = LLMEngine(model, tokenizer, cfg)
        self.name = name

    @classmethod
    def from_source(cls, source: str, *, dtype: str = "float32", **kwargs) -> LocalBackend:
        from puyu_jax.pretrained import load_pretrained

        pre = load_pretrained(source, dtype=dtype)
        return cls(pre.model, pre.tokenizer, name=f"local:{source}:{dtype}", **kwargs)

    # ------------------------------------------------------------------ text
    def render(self, prompt) -> str:
        """Chat messages -> the model's chat-template text (with the assistant header)."""
        if isinstance(prompt, str):
            return prompt
        from puyu_jax.chat_templates import apply_chat_template

        return apply_chat_template(self.tokenizer, prompt, add_generation_prompt=True, tokenize=False)

    def encode(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_token
        add_bos = False if bos and text.startswith(bos) else None
        return self.tokenizer.encode(text, add_bos=add_bos, allow_special=True)

    # ------------------------------------------------------------------ scoring
    def _tokenize_pair(self, prompt, continuation: str) -> tuple[list[int], int]:
        """Ids of prompt + continuation and the index where the continuation's tokens start."""
        ctx = self.render(prompt)
        ctx_ids, ids = self.encode(ctx), self.encode(ctx + continuation)
        n = 0
        while n < min(len(ctx_ids), len(ids)) and ctx_ids[n] == ids[n]:
            n += 1
        n = max(n, 1)  # the first token has no context to be scored from
        cut = max(0, len(ids) - self.max_seq_len)
        return ids[cut:], max(n - cut, 1)

    def score_pairs(self, pairs: Sequence[tuple[list[int], int]]) -> list[Score]:
        """(ids, start) -> summed log-prob, token count and all-greedy flag of ids[start:]."""
        first: dict[tuple, int] = {}
        waves: list[list[int]] = [[], []]
        for j, (ids, start) in enumerate(pairs):
            key = tuple(ids[:start])
            waves[0 if first.setdefault(key, j) == j else 1].append(j)
        out: list[Score | None] = [None] * len(pairs)
        for wave in waves:
            if not wave:
                continue
            scores = self.engine.score_batch([pairs[j][0] for j in wave], [pairs[j][1] - 1 for j in wave])
            for j, (lp, greedy) in zip(wave, scores):
                ids, start = pairs[j]
                out[j] = Score(float(lp[start:].astype("float64").sum()), len(ids) - start, bool(greedy[start:].all()))
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests: Sequence[tuple]) -> list[Score]:
        """Summed log-prob of each continuation given its prompt, scored through the engine."""
        return self.score_pairs([self._tokenize_pair(p, c) for p, c in requests])

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence, max_out_len: int, stops: Sequence[str] = ()) -> list[str]:
        """Greedy completions (cut at the first stop string), batched by the engine."""
        keep = max(1, self.max_seq_len - max_out_len)
        ids = [self.encode(self.render(p))[-keep:] for p in prompts]
        gen = GenerationConfig(max_new_tokens=max_out_len, temperature=0.0, stop=tuple(s for s in stops if s))
        outs = self.engine.generate(ids, gen)
        return [truncate_at(o.outputs[0].text, stops) for o in outs]
