"""A puyu model in-process: batched log-likelihood scoring and batched greedy generation.

Scoring packs requests (sorted by length) into right-padded [rows, T] batches, T a power of
two and rows * T within a token budget, so a handful of compiled shapes serve a whole
dataset; `score_tokens` is the pure, jit'd step a serving engine can take over later.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from puyu_jax.eval.backends import Score, truncate_at


@functools.partial(jax.jit, static_argnames=("graphdef",))
def score_tokens(graphdef, state, tokens, segment_ids, last):
    """Per-position next-token log-probs and greedy flags, plus one full distribution per row.

    Args:
      tokens: [b, t] int32, right-padded; segment_ids: [b, t] (1 real, 0 padding);
      last: [b] int32, the position whose next-token distribution is returned whole.
    Returns:
      (logprob [b, t-1] float32 of tokens[:, 1:], greedy [b, t-1] bool, dist [b, v] float32 log-probs).
    """
    model = nnx.merge(graphdef, state)
    logits, _ = model(tokens, segment_ids=segment_ids)
    norm = jax.nn.logsumexp(logits, axis=-1)  # [b, t]
    target = tokens[:, 1:]
    picked = jnp.take_along_axis(logits[:, :-1], target[..., None], axis=-1)[..., 0]
    lp = picked - norm[:, :-1]
    greedy = jnp.argmax(logits[:, :-1], axis=-1) == target
    rows = jnp.arange(tokens.shape[0])
    dist = logits[rows, last] - norm[rows, last][:, None]
    return lp, greedy, dist


def _pow2(n: int, lo: int = 32) -> int:
    return max(lo, 1 << (max(n, 1) - 1).bit_length())


class LocalBackend:
    """A puyu `Transformer` + tokenizer as an eval backend.

    Args:
      model, tokenizer: from `load_pretrained`.
      batch_size: rows per batch at most (scoring and generation).
      max_seq_len: prompts are cut from the left to fit.
      token_budget: rows * padded length per scoring batch at most.
      name: identity in the prediction cache (use the model source).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_seq_len: int = 2048, token_budget: int = 8192,
                 name: str = "local"):
        if tokenizer is None:
            raise ValueError("the local eval backend needs a model with a tokenizer")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.token_budget = batch_size, token_budget
        self.max_seq_len = min(max_seq_len, model.cfg.max_position_embeddings)
        self.graphdef, self.state = nnx.split(model)
        self.name = name
        self._generator = None

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

    def loglikelihood(self, requests: Sequence[tuple]) -> list[Score]:
        """Summed log-prob of each continuation given its prompt, scored in padded batches.

        Single-token continuations of the same prompt (option letters) share one sequence:
        they are all read from the prompt's last next-token distribution."""
        pairs = [self._tokenize_pair(p, c) for p, c in requests]
        units: list[list[int]] = []  # request indices per scored sequence (the first one's ids)
        shared: dict[tuple, int] = {}
        for j, (ids, start) in enumerate(pairs):
            if len(ids) - start == 1:
                key = tuple(ids[:start])
                if key in shared:
                    units[shared[key]].append(j)
                    continue
                shared[key] = len(units)
            units.append([j])
        order = sorted(range(len(units)), key=lambda u: -len(pairs[units[u][0]][0]))
        out: list[Score | None] = [None] * len(pairs)
        i = 0
        while i < len(order):
            t = _pow2(len(pairs[units[order[i]][0]][0]))
            rows = max(1, min(self.batch_size, self.token_budget // t))
            rows = 1 << (rows.bit_length() - 1)  # a power of two: few shapes
            idx = order[i:i + rows]
            tokens = np.zeros((rows, t), np.int32)
            seg = np.zeros((rows, t), np.int32)
            last = np.zeros((rows,), np.int32)
            for r, u in enumerate(idx):
                ids, start = pairs[units[u][0]]
                tokens[r, :len(ids)] = ids
                seg[r, :len(ids)] = 1
                last[r] = start - 1
            lp, greedy, dist = score_tokens(self.graphdef, self.state, jnp.asarray(tokens), jnp.asarray(seg),
                                            jnp.asarray(last))
            lp, greedy = np.asarray(lp), np.asarray(greedy)
            dist = np.asarray(dist) if any(len(units[u]) > 1 for u in idx) else None
            for r, u in enumerate(idx):
                ids, start = pairs[units[u][0]]
                span = slice(start - 1, len(ids) - 1)  # position p predicts token p + 1
                out[units[u][0]] = Score(float(lp[r, span].sum()), len(ids) - start, bool(greedy[r, span].all()))
                for j in units[u][1:]:
                    tok = pairs[j][0][-1]
                    out[j] = Score(float(dist[r, tok]), 1, bool(dist[r].argmax() == tok))
            i += len(idx)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence, max_out_len: int, stops: Sequence[str] = ()) -> list[str]:
        """Greedy completions (cut at the first stop string), batched by the KV-cache Generator."""
        from puyu_jax.generate import Generator, SamplingConfig

        if self._generator is None:
            self._generator = Generator(self.model, prompt_bucket=64)
        keep = max(1, self.max_seq_len - max_out_len)
        ids = [self.encode(self.render(p))[-keep:] for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_out_len, seed=0)
        texts: list[str] = [""] * len(ids)
        for k in range(0, len(order), self.batch_size):
            idx = order[k:k + self.batch_size]
            new: list[list[int]] = [[] for _ in idx]
            done = [False] * len(idx)
            for step, toks in enumerate(self._generator.stream([ids[j] for j in idx], sampling,
                                                               stop_ids=self.tokenizer.eos_ids)):
                for r, tok in enumerate(toks):
                    if tok >= 0 and not done[r]:
                        if tok in self.tokenizer.eos_ids:
                            done[r] = True
                        else:
                            new[r].append(int(tok))
                if stops and step % 4 == 3:
                    for r in range(len(idx)):
                        if not done[r] and truncate_at(self.tokenizer.decode(new[r], skip_special=True), stops) != \
                                self.tokenizer.decode(new[r], skip_special=True):
                            done[r] = True
                if all(done):
                    break
            for r, j in enumerate(idx):
                texts[j] = truncate_at(self.tokenizer.decode(new[r], skip_special=True), stops)
        return texts
