"""Scheduler on its own (no model): FCFS admission, token budget and chunked prefill,
decode-first, preemption of the latest arrival, prefix reuse on admission."""

import itertools

import numpy as np

from puyu_jax.serve.block_manager import BlockManager, block_hashes
from puyu_jax.serve.config import EngineConfig, GenerationConfig
from puyu_jax.serve.outputs import RequestMetrics
from puyu_jax.serve.scheduler import Scheduler, Sequence, SequenceGroup, Status

BS = 16
_ids = itertools.count()


def _seq(prompt: list[int]) -> Sequence:
    group = SequenceGroup(f"r{next(_ids)}", list(prompt), GenerationConfig(), 0, RequestMetrics(arrival_time=0.0))
    seq = Sequence(next(_ids), group, 0, list(prompt), len(prompt), key_data=np.zeros(2, np.uint32))
    group.seqs.append(seq)
    return seq


def _scheduler(num_blocks=32, max_num_seqs=8, max_num_batched_tokens=64, prefix=True):
    cfg = EngineConfig(block_size=BS, num_blocks=num_blocks, max_num_seqs=max_num_seqs,
                       max_num_batched_tokens=max_num_batched_tokens, enable_prefix_caching=prefix)
    return Scheduler(cfg, BlockManager(num_blocks, BS, prefix))


def _run(sched: Scheduler, batch, sample=True):
    """What the engine does after a step: advance num_computed, register full blocks, append a token."""
    for seq, n in batch.prefill:
        seq.num_computed += n
    for seq in batch.decode:
        seq.num_computed += 1
    for seq in [s for s, _ in batch.prefill] + batch.decode:
        full = seq.num_computed // BS
        hashes = block_hashes(seq.token_ids, BS, full)
        for b, h in zip(seq.block_table[len(seq.hashes):full], hashes[len(seq.hashes):]):
            sched.blocks.register(b, h)
        seq.hashes = hashes
        if sample and seq.remaining == 0:
            seq.token_ids.append(7)


def test_fcfs_admission_within_the_token_budget_and_chunked_prefill():
    sched = _scheduler(max_num_batched_tokens=64)
    long, short = _seq(list(range(100))), _seq(list(range(200, 220)))
    sched.add(long)
    sched.add(short)
    b1 = sched.schedule()
    assert [(s, n) for s, n in b1.prefill] == [(long, 64)] and not b1.decode  # budget spent on the first
    assert short.status is Status.WAITING and len(long.block_table) == 4
    _run(sched, b1)
    b2 = sched.schedule()  # the rest of long's prompt, then short fills the budget
    assert [(s, n) for s, n in b2.prefill] == [(long, 36), (short, 20)]
    _run(sched, b2)
    b3 = sched.schedule()  # both decode now
    assert b3.decode == [long, short] and not b3.prefill


def test_max_num_seqs_holds_later_arrivals_back():
    sched = _scheduler(max_num_seqs=2)
    seqs = [_seq([i] * 5) for i in range(3)]
    for s in seqs:
        sched.add(s)
    batch = sched.schedule()
    assert [s for s, _ in batch.prefill] == seqs[:2] and list(sched.waiting) == [seqs[2]]


def test_decode_first_and_preemption_takes_the_latest_arrival():
    sched = _scheduler(num_blocks=5, max_num_batched_tokens=64)  # 4 usable blocks
    a, b = _seq(list(range(31))), _seq(list(range(100, 131)))  # 31 tokens: 2 blocks each
    sched.add(a)
    sched.add(b)
    _run(sched, sched.schedule())
    assert sched.blocks.num_free == 0 and a.status is b.status is Status.RUNNING
    # token 32 fits in block 2; token 33 needs a third block for each: none is free
    _run(sched, sched.schedule())
    batch = sched.schedule()
    assert batch.preempted == [b] and batch.decode == [a]  # the latest arrival goes, a keeps decoding
    assert b.status is Status.WAITING and sched.waiting[0] is b and b.num_computed == 0 and not b.block_table
    assert sched.num_preemptions == 1 and b.group.metrics.num_preemptions == 1
    assert len(a.block_table) == 3 and not batch.prefill  # nothing admitted in a step that preempted


def test_preempted_sequence_is_readmitted_first_and_reuses_its_cached_prefix():
    sched = _scheduler(num_blocks=5)
    a, b = _seq(list(range(31))), _seq(list(range(100, 131)))
    sched.add(a)
    sched.add(b)
    _run(sched, sched.schedule())
    _run(sched, sched.schedule())
    batch = sched.schedule()
    assert batch.preempted == [b]
    _run(sched, batch)
    late = _seq([5] * 20)
    sched.add(late)
    sched.remove(a)  # a finishes: its blocks go back
    batch = sched.schedule()
    assert [s for s, _ in batch.prefill][0] is b  # readmitted ahead of the later arrival
    # b's first full block was registered before preemption: reused, not recomputed
    assert b.num_computed == BS and batch.prefill[0][1] == len(b.token_ids) - BS


def test_prefix_reuse_on_admission_counts_cached_tokens():
    sched = _scheduler()
    system = list(range(40))  # 2 full blocks + 8
    first = _seq(system + [1, 2, 3])
    sched.add(first)
    _run(sched, sched.schedule())
    second = _seq(system + [4, 5])
    sched.add(second)
    batch = sched.schedule()
    shared = first.block_table[:2]
    assert second.block_table[:2] == shared and second.block_table[2] not in first.block_table
    assert (second, 42 - 32) in batch.prefill
    assert second.group.metrics.num_cached_tokens == 32
    assert all(sched.blocks.ref[b] == 2 for b in shared)
    sched.remove(first)
    sched.remove(second)
    assert sched.blocks.num_used == 0


def test_without_prefix_caching_admission_recomputes_everything():
    sched = _scheduler(prefix=False)
    first = _seq(list(range(40)))
    sched.add(first)
    _run(sched, sched.schedule())
    second = _seq(list(range(40)))
    sched.add(second)
    batch = sched.schedule()
    assert (second, 40) in batch.prefill and not set(second.block_table) & set(first.block_table)
