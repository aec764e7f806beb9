"""The serving engine: requests in at any step, tokens out every step.

    add_request ─► scheduler (continuous batching, chunked prefill, preemption)
                ─► block manager (paged KV, prefix cache)
                ─► runner (jit'd prefill / decode over the pool, sampling)
                ─► detokenizer, stop checks ─► RequestOutput per step

`LLMEngine` is synchronous and single-threaded: `step()` runs one scheduling round.
`puyu_jax.serve.async_engine.AsyncEngine` drives it from a background thread for
servers; `puyu_jax.serve.pipeline` is the offline Python API on top.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Sequence as Seq

import jax
import numpy as np

from puyu_jax.models.config import ModelConfig
from puyu_jax.serve.block_manager import BlockManager, block_hashes
from puyu_jax.serve.config import MAX_TOP_LOGPROBS, EngineConfig, GenerationConfig
from puyu_jax.serve.detokenize import update_text
from puyu_jax.serve.errors import PromptTooLongError, QueueFullError
from puyu_jax.serve.kv_cache import kv_bytes_per_block
from puyu_jax.serve.outputs import CompletionOutput, EngineStats, RequestMetrics, RequestOutput, TokenLogprob
from puyu_jax.serve.runner import ModelRunner, Row
from puyu_jax.serve.sampling import flags_for, seed_key_data
from puyu_jax.serve.scheduler import Scheduler, Sequence, SequenceGroup, Status

log = logging.getLogger(__name__)


class LLMEngine:
    """Continuous-batching engine over one model (optionally tensor-parallel)."""

    def __init__(self, model, tokenizer=None, config: EngineConfig = EngineConfig(), model_name: str = "model"):
        if config.quant in ("int4", "native"):
            from puyu_jax.quant import is_quantized, quantize_model

            if config.quant == "native" and not is_quantized(model):
                raise ValueError("engine.quant='native' needs a model loaded from a quantized GGUF "
                                 "(LLMEngine.from_pretrained('x.gguf', config) or puyu_jax.quant.gguf.load_native)")
            if not is_quantized(model):
                model = quantize_model(model, method=config.quant_method)
        self.config = config
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.model_config: ModelConfig = model.cfg
        self.max_model_len = config.max_model_len or self.model_config.max_position_embeddings
        bs = config.block_size
        num_blocks = config.num_blocks or int(
            config.kv_cache_memory_gb * 2**30 // kv_bytes_per_block(self.model_config, bs, config.kv_dtype))
        num_blocks = max(num_blocks, 2)
        self.blocks = BlockManager(num_blocks, bs, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.blocks)
        self.runner = ModelRunner(model, num_blocks=num_blocks, block_size=bs, kv_dtype=config.kv_dtype, tp=config.tp,
                                  attention_impl=config.attention_impl)
        # resident parameter bytes (quantized weights count their packed bytes)
        self.weight_bytes = int(sum(x.nbytes for x in jax.tree.leaves(self.runner.state)))
        log.info("weights: %.1f MiB resident (quant=%s)", self.weight_bytes / 2**20, config.quant)
        self.groups: dict[str, SequenceGroup] = {}
        self._seq_ids = itertools.count()
        self._finished_out: list[RequestOutput] = []  # aborted requests reported at the next step
        self._rng = np.random.default_rng()
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        # the tokenizer knows the chat template's turn end as well as the model's EOS
        eos = tokenizer.eos_ids if tokenizer is not None else (self.model_config.eos_token_id,)
        self.eos_ids = frozenset(int(i) for i in eos)

    @classmethod
    def from_pretrained(cls, source: str, config: EngineConfig = EngineConfig()) -> "LLMEngine":
        """Loads a model (any source `puyu_jax.pretrained.load_pretrained` accepts) and its tokenizer."""
        from puyu_jax.pretrained import load_pretrained

        if config.quant == "native":
            from puyu_jax.quant.gguf import load_native

            pre = load_native(source, dtype=config.dtype)
        else:
            pre = load_pretrained(source, dtype=config.dtype)
        return cls(pre.model, pre.tokenizer, config, model_name=str(source))

    # ------------------------------------------------------------------ requests

    def add_request(self, request_id: str | None, prompt: str | Seq[int], gen: GenerationConfig = GenerationConfig(),
                    arrival_time: float | None = None) -> str:
        """Queues a request. Raises PromptTooLongError, QueueFullError or ValueError."""
        request_id = request_id or uuid.uuid4().hex
        if request_id in self.groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass token ids")
            prompt_ids = self.tokenizer.encode(prompt)
        else:
            prompt_ids = [int(t) for t in prompt]
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        vocab = self.model_config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        total = len(prompt_ids) + gen.max_new_tokens
        if len(prompt_ids) >= self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.max_model_len}", "prompt")
        if total > self.max_model_len:
            raise PromptTooLongError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({gen.max_new_tokens}) = {total} exceeds the "
                f"context of {self.max_model_len}", "max_tokens")
        if self.scheduler.blocks_for(total) > self.blocks.num_blocks - 1:
            raise PromptTooLongError(
                f"prompt + max_tokens = {total} tokens needs more KV blocks than the pool holds "
                f"({self.blocks.num_blocks - 1} x {self.config.block_size})", "max_tokens")
        if len(self.scheduler.waiting) >= self.config.max_waiting:
            raise QueueFullError(f"{len(self.scheduler.waiting)} requests are waiting; try again later")
        seed = gen.seed if gen.seed is not None else int(self._rng.integers(0, 2**63))
        metrics = RequestMetrics(arrival_time=arrival_time or time.time(), num_prompt_tokens=len(prompt_ids))
        group = SequenceGroup(request_id, prompt_ids, gen, seed, metrics)
        if gen.prompt_logprobs is not None:
            group.prompt_logprobs = self._prompt_logprobs(prompt_ids, gen.prompt_logprobs)
        seq = self._new_seq(group, 0, list(prompt_ids))
        seq.fork_pending = gen.n > 1
        if gen.max_new_tokens == 0:  # scoring only: done once the prompt is scored
            for index in range(1, gen.n):
                self._new_seq(group, index, list(prompt_ids))
            for s in group.seqs:
                s.status, s.finish_reason = Status.FINISHED, "length"
            metrics.first_token_time = metrics.finished_time = time.time()
            self.prompt_tokens_total += len(prompt_ids)
            self._finished_out.append(self._output(group, final=True))
            return request_id
        self.groups[request_id] = group
        self.scheduler.add(seq)
        return request_id

    def score(self, token_ids: Seq[int], top: int = 0):
        """Log-probs of token_ids[1:] through the pool on blocks borrowed for the call (see
        `ModelRunner.score`). Raises QueueFullError when the pool cannot hold them now."""
        n = self.scheduler.blocks_for(len(token_ids))
        if not self.blocks.can_allocate(n):
            raise QueueFullError(f"{len(token_ids)} tokens need {n} free KV blocks, {self.blocks.num_free} are free; "
                                 "try again later")
        table = self.blocks.allocate(n)
        try:
            return self.runner.score(list(token_ids), table, top=top)
        finally:
            self.blocks.release(table)

    def _prompt_logprobs(self, prompt_ids: list[int], top: int) -> list[TokenLogprob | None]:
        """Each prompt token's log-prob given the tokens before it (scored through the pool)."""
        lp, ids, tlp = self.score(prompt_ids, top=MAX_TOP_LOGPROBS)
        out: list[TokenLogprob | None] = [None]
        for i, tok in enumerate(prompt_ids[1:]):
            best = [(int(t), self._piece(int(t)), float(v)) for t, v in zip(ids[i][:top], tlp[i][:top])]
            out.append(TokenLogprob(tok, self._piece(tok), float(lp[i]), best))
        return out

    def _new_seq(self, group: SequenceGroup, index: int, token_ids: list[int]) -> Sequence:
        seq = Sequence(next(self._seq_ids), group, index, token_ids, len(group.prompt_ids),
                       key_data=seed_key_data(group.seed + index))
        group.seqs.append(seq)
        return seq

    def abort_request(self, request_id: str) -> None:
        """Cancels a request and frees its KV blocks now; its final output (finish_reason
        "abort") comes with the next step."""
        group = self.groups.pop(request_id, None)
        if group is None:
            return
        group.aborted = True
        for seq in group.seqs:
            if not seq.finished:
                self.scheduler.remove(seq)
                seq.status, seq.finish_reason = Status.FINISHED, "abort"
        group.metrics.finished_time = time.time()
        self._finished_out.append(self._output(group, final=True))

    def has_unfinished_requests(self) -> bool:
        return bool(self.groups) or bool(self._finished_out)

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(
            num_running=len(s.running), num_waiting=len(s.waiting), num_blocks_total=self.blocks.num_blocks - 1,
            num_blocks_used=self.blocks.num_used, num_preemptions=s.num_preemptions,
            prefix_cache_queries=self.blocks.queries, prefix_cache_hits=self.blocks.hits,
            prompt_tokens_total=self.prompt_tokens_total, generation_tokens_total=self.generation_tokens_total,
        )

    # ------------------------------------------------------------------ the step

    def step(self) -> list[RequestOutput]:
        """One scheduling round: prefill chunks and decode tokens, then outputs of every
        request that progressed (finished ones last time they appear)."""
        outputs, self._finished_out = self._finished_out, []
        batch = self.scheduler.schedule()
        now = time.time()
        progressed: dict[str, SequenceGroup] = {}
        prefill = [(s, n) for s, n in batch.prefill if n > 0]
        for seq, _ in batch.prefill:
            if seq.group.metrics.first_scheduled_time is None:
                seq.group.metrics.first_scheduled_time = now
        if prefill:
            self._run([(s, n) for s, n in prefill], progressed)
        if batch.decode:
            self._run([(s, 1) for s in batch.decode], progressed)
        for seq, n in batch.prefill:
            if n == 0:
                self._maybe_fork(seq)
        for group in progressed.values():
            outputs.append(self._output(group, final=group.finished))
            if group.finished:
                self.groups.pop(group.request_id, None)
        return outputs

    def _run(self, work: list[tuple[Sequence, int]], progressed: dict) -> None:
        rows = []
        for seq, n in work:
            g = seq.group.gen
            start = seq.num_computed
            rows.append(Row(
                tokens=seq.token_ids[start:start + n], start=start, block_table=seq.block_table,
                temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, min_p=g.min_p,
                repetition_penalty=g.repetition_penalty, presence_penalty=g.presence_penalty,
                frequency_penalty=g.frequency_penalty, key_data=seq.key_data, step=len(seq.output_ids),
                history=seq.token_ids if g.uses_penalties else None, num_prompt=seq.num_prompt,
            ))
        flags = flags_for([s.group.gen for s, _ in work])
        result = self.runner.step(rows, flags)
        now = time.time()
        for i, (seq, n) in enumerate(work):
            seq.num_computed += n
            self.prompt_tokens_total += max(0, min(seq.num_computed, seq.num_prompt) - (seq.num_computed - n))
            self._register_blocks(seq)
            if seq.num_computed < len(seq.token_ids):
                if seq.fork_pending and seq.remaining == 0:
                    self._maybe_fork(seq)
                continue  # a prompt chunk: nothing sampled yet
            token = int(result["tokens"][i])
            self._append(seq, token, result, i, now)
            progressed[seq.group.request_id] = seq.group

    def _register_blocks(self, seq: Sequence) -> None:
        bs = self.blocks.block_size
        full = seq.num_computed // bs
        if full > len(seq.hashes):
            seq.hashes = block_hashes(seq.token_ids, bs, full)
            for b in range(full):
                self.blocks.register(seq.block_table[b], seq.hashes[b])

    def _maybe_fork(self, seq: Sequence) -> None:
        """n > 1: once the prompt (but its last token) is cached, the other n-1 choices share
        its blocks; the last, partly filled block is copied for each of them."""
        if not seq.fork_pending or seq.remaining != 0:
            return
        seq.fork_pending = False
        group = seq.group
        bs = self.blocks.block_size
        n_full = seq.num_computed // bs
        partial = seq.num_computed % bs != 0
        copies = []
        for index in range(1, group.gen.n):
            child = self._new_seq(group, index, list(seq.token_ids))
            child.num_computed = seq.num_computed
            shared = seq.block_table[:n_full]
            self.blocks.share(shared)
            child.block_table = list(shared)
            child.hashes = list(seq.hashes[:n_full])
            if partial:
                if not self.blocks.can_allocate(1):
                    # no room to copy: recompute this choice from scratch when admitted
                    self.blocks.release(child.block_table)
                    child.block_table, child.hashes, child.num_computed = [], [], 0
                    self.scheduler.waiting.appendleft(child)
                    continue
                (fresh,) = self.blocks.allocate(1)
                copies.append((seq.block_table[n_full], fresh))
                child.block_table.append(fresh)
            child.status = Status.RUNNING
            self.scheduler.running.append(child)
        self.runner.copy_blocks(copies)

    def _append(self, seq: Sequence, token: int, result: dict, i: int, now: float) -> None:
        group, gen = seq.group, seq.group.gen
        seq.token_ids.append(token)
        m = group.metrics
        if m.first_token_time is None:
            m.first_token_time = now
        m.num_generated_tokens += 1
        self.generation_tokens_total += 1
        if gen.logprobs or gen.top_logprobs:
            top = []
            if gen.top_logprobs and "top_ids" in result:
                top = [(int(t), self._piece(int(t)), float(lp))
                       for t, lp in zip(result["top_ids"][i][: gen.top_logprobs], result["top_logprobs"][i][: gen.top_logprobs])]
            seq.logprobs.append(TokenLogprob(token, self._piece(token), float(result["logprob"][i]), top))
        out_ids = seq.output_ids
        if self.tokenizer is not None:
            seq.text, stop, seq.hold = update_text(self.tokenizer, out_ids, seq.text, gen)
            if stop is not None:
                return self._finish(seq, "stop", stop)
        if token in gen.stop_token_ids:
            return self._finish(seq, "stop", token)
        if not gen.ignore_eos and token in self.eos_ids:
            return self._finish(seq, "stop", token)
        if len(out_ids) >= gen.max_new_tokens or len(seq.token_ids) >= self.max_model_len:
            return self._finish(seq, "length", None)

    def _finish(self, seq: Sequence, reason: str, stop_reason) -> None:
        seq.finish_reason, seq.stop_reason = reason, stop_reason
        self.scheduler.remove(seq)
        seq.status = Status.FINISHED
        if seq.group.finished:
            seq.group.metrics.finished_time = time.time()

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token]) if self.tokenizer is not None else str(token)

    def _output(self, group: SequenceGroup, final: bool) -> RequestOutput:
        outs = []
        for seq in group.seqs:
            visible = len(seq.text) - (0 if seq.finished else seq.hold)
            delta_text = seq.text[seq.emitted_text:visible] if visible > seq.emitted_text else ""
            seq.emitted_text = max(seq.emitted_text, visible)
            ids = seq.output_ids
            delta_ids = ids[seq.emitted_tokens:]
            seq.emitted_tokens = len(ids)
            lps = delta_lps = None
            if group.gen.logprobs or group.gen.top_logprobs:
                lps, delta_lps = list(seq.logprobs), seq.logprobs[seq.emitted_logprobs:]
                seq.emitted_logprobs = len(seq.logprobs)
            outs.append(CompletionOutput(
                index=seq.index, text=seq.text[: seq.emitted_text], token_ids=list(ids), delta_text=delta_text,
                delta_token_ids=list(delta_ids), logprobs=lps, delta_logprobs=delta_lps,
                finish_reason=seq.finish_reason, stop_reason=seq.stop_reason,
            ))
        outs.sort(key=lambda o: o.index)
        return RequestOutput(group.request_id, list(group.prompt_ids), outs, final, group.metrics,
                             prompt_logprobs=group.prompt_logprobs)

    def warmup(self, batch_sizes: Seq[int] = (1,), prompt_len: int = 16) -> float:
        """Compiles the steps the first requests will need (one prefill and decode per
        batch size) by running throwaway requests; returns the seconds it took."""
        t0 = time.perf_counter()
        caching = self.blocks.prefix_caching
        self.blocks.prefix_caching = False  # leave no throwaway blocks in the prefix cache
        try:
            for b in batch_sizes:
                b = min(b, self.config.max_num_seqs)
                prompt = [1] * min(prompt_len, self.max_model_len - 3)
                self.generate([prompt] * b, GenerationConfig(max_new_tokens=3, ignore_eos=True))
        finally:
            self.blocks.prefix_caching = caching
        self.prompt_tokens_total = self.generation_tokens_total = 0
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ offline

    def generate(self, prompts: Seq[str | Seq[int]], gen: GenerationConfig | Seq[GenerationConfig] = GenerationConfig(),
                 progress: bool = False) -> list[RequestOutput]:
        """Runs prompts to completion (all submitted at once); outputs in prompt order."""
        gens = list(gen) if isinstance(gen, (list, tuple)) else [gen] * len(prompts)
        ids = [self.add_request(None, p, g) for p, g in zip(prompts, gens)]
        final: dict[str, RequestOutput] = {}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="generate", unit="req")
        while len(final) < len(ids):
            for out in self.step():
                if out.finished:
                    final[out.request_id] = out
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [final[i] for i in ids]
