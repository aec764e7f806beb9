"""Any OpenAI-compatible server as an eval backend.

Scoring uses `/v1/completions` with `echo=True, logprobs=1, max_tokens=0` (the prompt's own
token log-probs; vLLM, LMDeploy and the legacy OpenAI API offer it) and works on text
prompts only; generation uses `/v1/chat/completions` (a text prompt is sent as one user turn).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from puyu_jax.eval.backends import Score, truncate_at


class OpenAIBackend:
    """Args:
      base_url: e.g. `http://127.0.0.1:23333/v1` (`/v1` is appended when missing).
      model: served model name ("" = the first of `GET /v1/models`).
      concurrency: requests in flight; batch_size: prompts per completions request.
    """

    def __init__(self, base_url: str, *, model: str = "", api_key: str = "EMPTY", concurrency: int = 4,
                 batch_size: int = 8, timeout: float = 300.0, max_retries: int = 2):
        import openai

        url = base_url.rstrip("/")
        if not url.endswith("/v1"):
            url += "/v1"
        self.client = openai.OpenAI(base_url=url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=max_retries)
        if not model:
            models = list(self.client.models.list())
            if not models:
                raise ValueError(f"{url} serves no model")
            model = models[0].id
        self.model, self.url = model, url
        self.concurrency, self.batch_size = max(1, concurrency), max(1, batch_size)
        self.name = f"openai:{url}:{model}"

    def _map(self, fn, items: list) -> list:
        if self.concurrency == 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    def _score_chunk(self, chunk: list[tuple[str, str]]) -> list[Score]:
        resp = self.client.completions.create(
            model=self.model, prompt=[p + c for p, c in chunk], max_tokens=0, echo=True, logprobs=1, temperature=0.0)
        choices = sorted(resp.choices, key=lambda c: c.index)
        if len(choices) != len(chunk):
            raise RuntimeError(f"{self.url}: {len(choices)} choices for {len(chunk)} prompts")
        out = []
        for (prompt, _), ch in zip(chunk, choices):
            lp = ch.logprobs
            if lp is None or lp.token_logprobs is None or lp.text_offset is None:
                raise RuntimeError(f"{self.url} returned no prompt logprobs; it cannot score (use gen datasets)")
            total, n, greedy = 0.0, 0, True
            for i, (tok, off, val) in enumerate(zip(lp.tokens, lp.text_offset, lp.token_logprobs)):
                if off < len(prompt) or val is None:
                    continue
                total += val
                n += 1
                top = (lp.top_logprobs or [None] * len(lp.tokens))[i]
                if top:
                    greedy &= max(top, key=top.get) == tok
            out.append(Score(total, n, greedy))
        return out

    def loglikelihood(self, requests: Sequence[tuple]) -> list[Score]:
        """Summed log-prob of each continuation (by the server's text offsets)."""
        for p, _ in requests:
            if not isinstance(p, str):
                raise ValueError("option scoring over an OpenAI URL needs text prompts (the base meta template)")
        reqs = list(requests)
        chunks = [reqs[i:i + self.batch_size] for i in range(0, len(reqs), self.batch_size)]
        return [s for part in self._map(self._score_chunk, chunks) for s in part]

    def _chat(self, prompt, max_out_len: int, stops: Sequence[str]) -> str:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        kwargs = {"stop": list(stops)[:4]} if stops else {}
        resp = self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=max_out_len,
                                                   temperature=0.0, **kwargs)
        return truncate_at(resp.choices[0].message.content or "", stops)

    def generate(self, prompts: Sequence, max_out_len: int, stops: Sequence[str] = ()) -> list[str]:
        """Greedy chat completions, `concurrency` at a time."""
        return self._map(lambda p: self._chat(p, max_out_len, stops), list(prompts))
