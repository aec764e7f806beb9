"""Sequences and the continuous-batching scheduler.

Each step the scheduler picks, in first-come-first-served order:
  1. one decode token for every running sequence that has all earlier tokens cached;
     when the pool has no block for it, the latest-arrived running sequence is
     preempted (its blocks freed, recomputed later from its tokens);
  2. the next chunk of any running sequence still prefilling its prompt;
  3. new sequences from the waiting queue, reusing prefix-cached blocks,
while the step holds at most `max_num_seqs` sequences and `max_num_batched_tokens`
new tokens. Prompts longer than the token budget are prefilled in chunks over several
steps, so decoding sequences keep producing tokens meanwhile.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from puyu_jax.serve.block_manager import BlockManager, block_hashes
from puyu_jax.serve.config import EngineConfig, GenerationConfig
from puyu_jax.serve.outputs import RequestMetrics, TokenLogprob


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One choice of a request: its tokens (prompt + output), cache state and text."""

    seq_id: int
    group: "SequenceGroup"
    index: int
    token_ids: list[int]
    num_prompt: int
    key_data: np.ndarray
    fork_pending: bool = False  # n > 1: prefill all but the last prompt token, then fork
    num_computed: int = 0
    block_table: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    hashes: list[int] = field(default_factory=list)  # of the registered full blocks
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str = ""  # detokenized output (stop string cut off once found)
    hold: int = 0  # trailing characters of text not yet safe to stream (partial UTF-8 or stop string)
    emitted_text: int = 0  # characters already handed out
    emitted_tokens: int = 0
    emitted_logprobs: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    # prompt scoring: the log-prob of prompt token p + 1 is read at position p, for every
    # p >= score_from; `scored` counts the positions done (they survive a preemption)
    score_from: int | None = None
    scored: int = 0
    score_only: bool = False  # max_new_tokens 0: done once the prompt is scored
    guide: object | None = None  # constrained decoding: the `guided.Guide` matcher, advanced per output token

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt:]

    @property
    def target(self) -> int:
        """Tokens whose KV must be computed before the next sample (or the fork, or the end
        of scoring: the last prompt token predicts nothing to score)."""
        return len(self.token_ids) - (1 if self.fork_pending or self.score_only else 0)

    @property
    def scoring(self) -> bool:
        """Prompt positions remain to be scored."""
        return self.score_from is not None and max(self.score_from, self.scored) < self.num_prompt - 1

    @property
    def score_next(self) -> int:
        """The first prompt position still to score."""
        return max(self.score_from or 0, self.scored)

    @property
    def max_ahead(self) -> int:
        """Tokens this sequence may still generate."""
        return max(1, self.group.gen.max_new_tokens - len(self.output_ids))

    @property
    def remaining(self) -> int:
        return self.target - self.num_computed

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass(eq=False)
class SequenceGroup:
    """A request: one prompt, n choices."""

    request_id: str
    prompt_ids: list[int]
    gen: GenerationConfig
    seed: int
    metrics: RequestMetrics
    seqs: list[Sequence] = field(default_factory=list)
    prompt_logprobs: list | None = None
    # raw prompt scores [len(prompt)] (NaN / False where not scored): log-prob, was-argmax
    prompt_scores: tuple | None = None
    prompt_top: tuple | None = None  # (ids, log-probs) [len(prompt), MAX_TOP_LOGPROBS] for the API
    api_scores: bool = False  # build `prompt_logprobs` (the API's per-token form) too
    aborted: bool = False  # cancelled, or failed in a step: it produces no further output

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs) and len(self.seqs) == self.gen.n


@dataclass
class ScheduledBatch:
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, new tokens)
    decode: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)


class Scheduler:
    def __init__(self, config: EngineConfig, blocks: BlockManager):
        self.config = config
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in arrival order: the last is preempted first
        self.num_preemptions = 0

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.blocks.block_size)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Takes a sequence out of the queues and frees its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq.block_table)
        seq.block_table = []

    def preempt(self, seq: Sequence) -> None:
        """Frees a running sequence's blocks; it is recomputed from its tokens when readmitted."""
        self.running.remove(seq)
        self.blocks.release(seq.block_table)
        seq.block_table, seq.hashes, seq.num_computed = [], [], 0
        seq.status = Status.WAITING
        seq.group.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _grow(self, seq: Sequence, n_new: int) -> int:
        """Blocks seq still needs to hold num_computed + n_new tokens."""
        return max(0, self.blocks_for(seq.num_computed + n_new) - len(seq.block_table))

    def admissible(self) -> bool:
        """Prompt work could run now: a sequence mid-prefill, or a waiting one with room to start."""
        if any(s.remaining > 1 for s in self.running):
            return True
        return bool(self.waiting) and len(self.running) < self.config.max_num_seqs

    def schedule(self, lookahead: int = 1) -> ScheduledBatch:
        """Plans one round. Decoding sequences get blocks for up to `lookahead` new tokens
        (several decode steps per dispatch), or for one when the pool is short."""
        out = ScheduledBatch()
        budget = self.config.max_num_batched_tokens

        # 1. decode: tokens for each running sequence that is past its prompt
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or seq.remaining != 1:
                continue
            ahead = self._grow(seq, min(lookahead, seq.max_ahead))
            if ahead and self.blocks.can_allocate(ahead):
                seq.block_table += self.blocks.allocate(ahead)
                out.decode.append(seq)
                budget -= 1
                continue
            need = self._grow(seq, 1)
            while need and not self.blocks.can_allocate(need):
                victim = self.running[-1]
                self.preempt(victim)
                out.preempted.append(victim)
                if victim in out.decode:
                    out.decode.remove(victim)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                continue
            seq.block_table += self.blocks.allocate(need)
            out.decode.append(seq)
            budget -= 1

        # 2. running sequences in the middle of a chunked prefill
        for seq in self.running:
            if budget <= 0:
                break
            if seq in out.decode or seq.remaining < 2:
                continue
            n = min(seq.remaining, budget)
            need = self._grow(seq, n)
            if not self.blocks.can_allocate(need):
                break
            seq.block_table += self.blocks.allocate(need)
            out.prefill.append((seq, n))
            budget -= n

        # 3. admit waiting sequences, first come first served
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs and not out.preempted:
            seq = self.waiting[0]
            if not seq.block_table and seq.num_computed == 0:
                cached = self.blocks.match_prefix(seq.token_ids)
                keep = seq.target // self.blocks.block_size
                if seq.scoring:  # positions to score must be computed, not read from the cache
                    keep = min(keep, seq.score_next // self.blocks.block_size)
                self.blocks.release(cached[keep:])
                cached = cached[:keep]
                seq.block_table = list(cached)
                seq.num_computed = len(cached) * self.blocks.block_size
                seq.hashes = block_hashes(seq.token_ids, self.blocks.block_size, len(cached))
                if seq.index == 0 and seq.group.metrics.num_cached_tokens == 0:
                    seq.group.metrics.num_cached_tokens = seq.num_computed
            n = min(seq.remaining, budget)
            need = self._grow(seq, n)
            if not self.blocks.can_allocate(need):
                break
            self.waiting.popleft()
            seq.block_table += self.blocks.allocate(need)
            seq.status = Status.RUNNING
            self.running.append(seq)
            if n == 0:  # fully cached up to the fork point: nothing to compute
                out.prefill.append((seq, 0))
            elif n == 1:
                out.decode.append(seq)
            else:
                out.prefill.append((seq, n))
            budget -= n
        return out
