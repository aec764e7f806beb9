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
import sys
import time
import uuid
from collections.abc import Sequence as Seq

import jax
import numpy as np

from puyu_jax.models.config import ModelConfig
from puyu_jax.serve.block_manager import BlockManager, block_hashes
from puyu_jax.serve.config import MAX_TOP_LOGPROBS, EngineConfig, GenerationConfig
from puyu_jax.serve.detokenize import update_text
from puyu_jax.serve.errors import PromptTooLongError, QueueFullError, RequestFailedError
from puyu_jax.serve.guided import Guides, allocate_bitmask
from puyu_jax.serve.kv_cache import kv_bytes_per_block
from puyu_jax.serve.outputs import CompletionOutput, EngineStats, RequestMetrics, RequestOutput, TokenLogprob
from puyu_jax.serve.runner import ModelRunner, Row
from puyu_jax.serve.sampling import flags_for, seed_key_data
from puyu_jax.serve.scheduler import Scheduler, Sequence, SequenceGroup, Status

log = logging.getLogger(__name__)


class LLMEngine:
    """Continuous-batching engine over one model (optionally tensor-parallel)."""

    def __init__(self, model, tokenizer=None, config: EngineConfig = EngineConfig(), model_name: str = "model"):
        if config.quant != "none":
            from puyu_jax.quant import is_quantized, quantize_model

            if config.quant == "native" and not is_quantized(model):
                raise ValueError("engine.quant='native' needs a model loaded from a quantized GGUF "
                                 "(LLMEngine.from_pretrained('x.gguf', config) or puyu_jax.quant.gguf.load_native)")
            if not is_quantized(model) and config.quant == "w8a8":
                if tokenizer is None:
                    raise ValueError("engine.quant='w8a8' calibrates SmoothQuant on text: the model has no tokenizer")
                from puyu_jax.quant.awq import calibration_tokens

                model = quantize_model(model, "smoothquant", calib_tokens=calibration_tokens(tokenizer, None, 4),
                                       awq_config={"alpha": 0.5})
            elif not is_quantized(model):
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
        self._failures: list[tuple[str, BaseException]] = []  # requests whose step raised (see _fail_group)
        self._rng = np.random.default_rng()
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        # the tokenizer knows the chat template's turn end as well as the model's EOS
        eos = tokenizer.eos_ids if tokenizer is not None else (self.model_config.eos_token_id,)
        self.eos_ids = frozenset(int(i) for i in eos)
        self._guides: Guides | None = None  # built on the first constrained request

    @property
    def guides(self) -> Guides:
        """Compiles and caches this engine's grammar constraints (see `serve/guided.py`)."""
        if self._guides is None:
            if self.tokenizer is None:
                raise ValueError("constrained decoding (json_schema, regex, choice, grammar) needs a tokenizer")
            self._guides = Guides.for_tokenizer(self.tokenizer, self.model_config.vocab_size, self.eos_ids)
        return self._guides

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

    def validate_request(self, prompt: str | Seq[int], gen: GenerationConfig = GenerationConfig()) -> list[int]:
        """The checks of `add_request` that read no scheduler state, so any thread may run them
        (the server does, before the request reaches the engine's loop): the prompt's token ids.
        Raises PromptTooLongError or ValueError (a bad constraint included: its grammar is
        compiled, and cached, here)."""
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
        if len(prompt_ids) >= self.max_model_len + (gen.max_new_tokens == 0):  # scoring needs no room to grow
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
        if gen.guide is not None and gen.max_new_tokens:
            self.guides.compile(*gen.guide)
        return prompt_ids

    def add_request(self, request_id: str | None, prompt: str | Seq[int], gen: GenerationConfig = GenerationConfig(),
                    arrival_time: float | None = None, *, score_from: int | None = None) -> str:
        """Queues a request. Raises PromptTooLongError, QueueFullError or ValueError.

        With `gen.prompt_logprobs` set, the prompt is scored as it is prefilled (batched with
        other work by the scheduler): `RequestOutput.prompt_logprobs` (the API's form) and
        `prompt_scores` (arrays). `score_from` > 0 scores only the prompt tokens after that
        position (e.g. an evaluation's continuation) and lets the prefix cache serve the rest;
        it then fills `prompt_scores` only.
        """
        request_id = request_id or uuid.uuid4().hex
        if request_id in self.groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        prompt_ids = self.validate_request(prompt, gen)
        if len(self.scheduler.waiting) >= self.config.max_waiting:
            raise QueueFullError(f"{len(self.scheduler.waiting)} requests are waiting; try again later")
        guide = self.guides.guide(gen) if gen.guide is not None and gen.max_new_tokens else None  # ValueError if bad
        seed = gen.seed if gen.seed is not None else int(self._rng.integers(0, 2**63))
        metrics = RequestMetrics(arrival_time=arrival_time or time.time(), num_prompt_tokens=len(prompt_ids))
        group = SequenceGroup(request_id, prompt_ids, gen, seed, metrics)
        seq = self._new_seq(group, 0, list(prompt_ids))
        seq.guide = guide
        if gen.prompt_logprobs is not None:
            seq.score_from = max(0, min(int(score_from or 0), len(prompt_ids) - 1))
            group.api_scores = score_from is None
            n = len(prompt_ids)
            group.prompt_scores = (np.full(n, np.nan, np.float32), np.zeros(n, bool))
            if group.api_scores and gen.prompt_logprobs:
                group.prompt_top = (np.zeros((n, MAX_TOP_LOGPROBS), np.int32), np.zeros((n, MAX_TOP_LOGPROBS), np.float32))
        seq.score_only = gen.max_new_tokens == 0
        seq.fork_pending = gen.n > 1 and not seq.score_only
        self.groups[request_id] = group
        if seq.score_only and not seq.scoring:  # a one-token prompt: nothing to score
            self._finish_scoring(seq)
            self.groups.pop(request_id, None)
            self._finished_out.append(self._output(group, final=True))
            return request_id
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

    def _build_prompt_logprobs(self, group: SequenceGroup) -> None:
        """The API's per-token form of a scored prompt: None, then each token's log-prob and the top k."""
        lp, _ = group.prompt_scores
        top = group.gen.prompt_logprobs or 0
        out: list[TokenLogprob | None] = [None]
        for i, tok in enumerate(group.prompt_ids[1:], start=1):
            best = []
            if top:
                ids, tlp = group.prompt_top
                best = [(int(t), self._piece(int(t)), float(v)) for t, v in zip(ids[i][:top], tlp[i][:top])]
            out.append(TokenLogprob(tok, self._piece(tok), float(lp[i]), best))
        group.prompt_logprobs = out

    def _collect_scores(self, seq: Sequence, row, result: dict, i: int) -> None:
        """Stores a step's prompt scores (row.score_index maps to prompt positions)."""
        group = seq.group
        lp, greedy = group.prompt_scores
        k = len(row.score_index)
        targets = np.asarray(row.score_index) + row.start + 1  # the scored prompt token of each entry
        lp[targets] = result["score_logprob"][i, :k]
        greedy[targets] = result["score_greedy"][i, :k]
        if group.prompt_top is not None and "score_top_ids" in result:
            group.prompt_top[0][targets] = result["score_top_ids"][i, :k]
            group.prompt_top[1][targets] = result["score_top_logprobs"][i, :k]
        seq.scored = int(targets[-1])
        if not seq.scoring and group.api_scores:
            self._build_prompt_logprobs(group)

    def _finish_scoring(self, seq: Sequence) -> None:
        """A scoring-only request is done: every choice finishes with reason "length"."""
        group = seq.group
        if group.api_scores and group.prompt_logprobs is None:
            self._build_prompt_logprobs(group)
        self.scheduler.remove(seq)
        for index in range(1, group.gen.n):
            self._new_seq(group, index, list(group.prompt_ids))
        for s in group.seqs:
            s.status, s.finish_reason = Status.FINISHED, "length"
        m = group.metrics
        m.first_token_time = m.first_token_time or time.time()
        m.finished_time = time.time()

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
        # several decode steps per dispatch while no prompt work is waiting to start
        steps = 1 if self.scheduler.admissible() else self.config.decode_steps
        batch = self.scheduler.schedule(lookahead=steps)
        now = time.time()
        progressed: dict[str, SequenceGroup] = {}
        prefill = [(s, n) for s, n in batch.prefill if n > 0]
        for seq, _ in batch.prefill:
            if seq.group.metrics.first_scheduled_time is None:
                seq.group.metrics.first_scheduled_time = now
        if prefill:
            self._run([(s, n) for s, n in prefill], progressed)
        decode = [s for s in batch.decode if not s.finished]  # a request may have failed in the prefill
        # constrained rows decode one step at a time: each mask depends on the token sampled just before
        if decode and steps > 1 and not any(s.score_only or s.scoring or s.guide is not None for s in decode):
            self._decode_chunk(decode, steps, progressed)
        elif decode:
            self._run([(s, 1) for s in decode], progressed)
        for seq, n in batch.prefill:
            if n == 0:
                self._maybe_fork(seq)
                if seq.score_only and seq.remaining == 0 and not seq.finished:
                    self._finish_scoring(seq)
                    progressed[seq.group.request_id] = seq.group
        for group in progressed.values():
            if group.aborted:  # failed in this step: reported through take_failures
                continue
            outputs.append(self._output(group, final=group.finished))
            if group.finished:
                self.groups.pop(group.request_id, None)
        return outputs

    def _run(self, work: list[tuple[Sequence, int]], progressed: dict) -> None:
        rows, kept = [], []
        for seq, n in work:
            if seq.finished:  # its request failed earlier in this step
                continue
            try:
                rows.append(self._work_row(seq, n))
                kept.append((seq, n))
            except Exception as e:  # noqa: BLE001 - one request's fault fails that request only
                self._fail_group(seq.group, e)
        if not rows:
            return
        score_top = MAX_TOP_LOGPROBS if any(r.score_index and s.group.prompt_top is not None
                                            for r, (s, _) in zip(rows, kept)) else 0
        results = self._run_rows(rows, [s.group.gen for s, _ in kept], [s.group for s, _ in kept], score_top,
                                self._bitmask(kept))
        now = time.time()
        for (seq, n), row, res in zip(kept, rows, results):
            if res is None or seq.finished:
                continue
            try:
                self._advance(seq, n, row, res[0], res[1], now, progressed)
            except Exception as e:  # noqa: BLE001
                self._fail_group(seq.group, e)

    def _work_row(self, seq: Sequence, n: int) -> Row:
        """The step's row for `n` tokens of `seq`, with the prompt positions to score if it asks."""
        start = seq.num_computed
        score_index = score_targets = None
        if seq.scoring:
            first = max(start, seq.score_next)
            last = min(start + n, seq.num_prompt - 1)  # positions [first, last) predict prompt tokens
            if last > first:
                score_index = list(range(first - start, last - start))
                score_targets = seq.token_ids[first + 1:last + 1]
        return self._row(seq, n, score_index=score_index, score_targets=score_targets)

    def _run_rows(self, rows: list[Row], gens: list[GenerationConfig], groups: list[SequenceGroup],
                  score_top: int = 0, bitmask: np.ndarray | None = None) -> list:
        """(result, row index) per row, or None for a row whose request failed. A failed batch is retried
        row by row to find the request at fault, unless it consumed the KV pool (then the engine cannot go on)."""
        try:
            result = self.runner.step(rows, flags_for(gens), score_top=score_top, bitmask=bitmask)
            return [(result, i) for i in range(len(rows))]
        except Exception:
            if not self.runner.pool_intact():
                raise
            if len(rows) == 1:
                self._fail_group(groups[0], sys.exc_info()[1])
                return [None]
        out = []
        for i, (row, gen, group) in enumerate(zip(rows, gens, groups)):
            if group.aborted:
                out.append(None)
                continue
            try:
                mask = bitmask[i:i + 1] if bitmask is not None else None
                out.append((self.runner.step([row], flags_for([gen]), score_top=score_top, bitmask=mask), 0))
            except Exception as e:  # noqa: BLE001
                if not self.runner.pool_intact():
                    raise
                self._fail_group(group, e)
                out.append(None)
        return out

    def _advance(self, seq: Sequence, n: int, row: Row, result: dict, i: int, now: float, progressed: dict) -> None:
        seq.num_computed += n
        self.prompt_tokens_total += max(0, min(seq.num_computed, seq.num_prompt) - (seq.num_computed - n))
        self._register_blocks(seq)
        if row.score_index:
            self._collect_scores(seq, row, result, i)
        if seq.score_only:
            if seq.remaining == 0:
                self._finish_scoring(seq)
                progressed[seq.group.request_id] = seq.group
            return
        if seq.num_computed < len(seq.token_ids):
            if seq.fork_pending and seq.remaining == 0:
                self._maybe_fork(seq)
            return  # a prompt chunk: nothing sampled yet
        token = int(result["tokens"][i])
        self._append(seq, token, result, i, now)
        progressed[seq.group.request_id] = seq.group

    def _fail_group(self, group: SequenceGroup, exc: BaseException) -> None:
        """Ends one request whose step raised: frees its blocks and hands `exc` to `take_failures`;
        the other requests go on."""
        log.error("request %s failed and was ended: %r", group.request_id, exc, exc_info=exc)
        group.aborted = True
        for seq in group.seqs:
            seq.fork_pending = False
            if not seq.finished:
                self.scheduler.remove(seq)
                seq.status, seq.finish_reason = Status.FINISHED, "error"
        group.metrics.finished_time = time.time()
        self.groups.pop(group.request_id, None)
        self._failures.append((group.request_id, exc))

    def take_failures(self) -> list[tuple[str, BaseException]]:
        """(request id, exception) of the requests that failed since the last call; they get no further output."""
        failed, self._failures = self._failures, []
        return failed

    def _row(self, seq: Sequence, n: int, **score) -> Row:
        g = seq.group.gen
        start = seq.num_computed
        return Row(
            tokens=seq.token_ids[start:start + n], start=start, block_table=seq.block_table,
            temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, min_p=g.min_p,
            repetition_penalty=g.repetition_penalty, presence_penalty=g.presence_penalty,
            frequency_penalty=g.frequency_penalty, key_data=seq.key_data, step=len(seq.output_ids),
            history=seq.token_ids if g.uses_penalties else None, num_prompt=seq.num_prompt, **score,
        )

    def _decode_chunk(self, seqs: list[Sequence], steps: int, progressed: dict) -> None:
        """Up to `steps` tokens for each decoding sequence in one dispatch; stop token ids and
        length limits end a row on the device, stop strings here (later tokens are dropped)."""
        bs = self.blocks.block_size
        try:
            rows = [self._row(seq, 1) for seq in seqs]
            limits, stops = [], []
            for seq in seqs:
                g = seq.group.gen
                room = len(seq.block_table) * bs - seq.num_computed
                limits.append(max(1, min(steps, room, seq.max_ahead, self.max_model_len - len(seq.token_ids))))
                stops.append(sorted(set(g.stop_token_ids) | (set() if g.ignore_eos else set(self.eos_ids))))
            flags = flags_for([s.group.gen for s in seqs])
            result = self.runner.decode(rows, flags, limits, stops, steps)
        except Exception:  # noqa: BLE001 - find the request at fault one step at a time
            if not self.runner.pool_intact():
                raise
            log.warning("multi-step decode failed; retrying this round one step per row", exc_info=True)
            self._run([(s, 1) for s in seqs], progressed)
            return
        now = time.time()
        for i, seq in enumerate(seqs):
            for j in range(result["tokens"].shape[0]):
                token = int(result["tokens"][j, i])
                if token < 0 or seq.finished:
                    break
                seq.num_computed += 1
                self._register_blocks(seq)
                self._append(seq, token, {k: v[j] for k, v in result.items()}, i, now)
            progressed[seq.group.request_id] = seq.group

    def _bitmask(self, work: list[tuple[Sequence, int]]):
        """Constrained decoding: the allowed-token bitmask of the rows that sample a token this step
        (all ones for free rows and prompt chunks), or None when no row is constrained. An engine that
        decodes several steps per call must run a batch holding a constrained row one step at a time:
        each mask depends on the token sampled just before."""
        guided = [(i, seq) for i, (seq, n) in enumerate(work)
                  if seq.guide is not None and seq.num_computed + n == len(seq.token_ids)]
        if not guided:
            return None
        bitmask = allocate_bitmask(len(work), self.model_config.vocab_size)
        for i, seq in guided:
            seq.guide.fill(bitmask, i)
        return bitmask

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
            child.guide = seq.guide.fork() if seq.guide is not None else None
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
        # constrained: the grammar offered only allowed tokens; it refuses one only past its end (ignore_eos)
        if seq.guide is not None and (not seq.guide.accept(token) or seq.guide.terminated):
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
                             prompt_logprobs=group.prompt_logprobs,
                             prompt_scores=group.prompt_scores if final else None)

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
                 progress: bool = False, *, score_from: Seq[int | None] | None = None) -> list[RequestOutput]:
        """Runs prompts to completion; outputs in prompt order. Prompts are queued as the
        waiting queue has room (`max_waiting`), so any number may be given."""
        gens = list(gen) if isinstance(gen, (list, tuple)) else [gen] * len(prompts)
        froms = list(score_from) if score_from is not None else [None] * len(prompts)
        ids: list[str] = []
        mine: set[str] = set()
        final: dict[str, RequestOutput] = {}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(prompts), desc="generate", unit="req")
        room = max(1, self.config.max_waiting - len(self.scheduler.waiting))
        while len(ids) < len(prompts) or len(final) < len(ids):
            while len(ids) < len(prompts) and len(self.scheduler.waiting) < room:
                k = len(ids)
                ids.append(self.add_request(None, prompts[k], gens[k], score_from=froms[k]))
                mine.add(ids[-1])
            outputs = self.step()
            for rid, exc in self.take_failures():
                if rid in mine:
                    for other in ids:
                        self.abort_request(other)
                    raise RequestFailedError(rid, exc) from exc
            for out in outputs:
                if out.request_id not in mine or out.request_id in final:
                    continue
                if out.finished:
                    final[out.request_id] = out
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [final[i] for i in ids]

    def score_batch(self, sequences: Seq[Seq[int]], score_from: Seq[int] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Scores many token sequences through the scheduler (batched prefill, prefix cache).

        Args:
          sequences: token ids, each at least two long.
          score_from: per sequence, the first position whose next token is scored (default 0).
        Returns:
          per sequence (log-prob [n] float32, was-the-argmax [n] bool) of each token given
          the ones before it; NaN / False at positions not scored (0 .. score_from).
        """
        gen = GenerationConfig(max_new_tokens=0, prompt_logprobs=0)
        froms = [int(f) for f in score_from] if score_from is not None else [0] * len(sequences)
        outs = self.generate(list(sequences), gen, score_from=froms)
        return [o.prompt_scores for o in outs]
