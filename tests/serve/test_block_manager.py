"""BlockManager on its own: allocation, reference counts, prefix reuse and LRU eviction."""

import pytest

from puyu_jax.serve.block_manager import BlockManager, block_hashes

BS = 4


def _fill(bm: BlockManager, tokens: list[int]) -> list[int]:
    """Allocates blocks for `tokens` and registers the full ones, as the engine does after a step."""
    n = -(-len(tokens) // BS)
    blocks = bm.allocate(n)
    for b, h in zip(blocks, block_hashes(tokens, BS, len(tokens) // BS)):
        bm.register(b, h)
    return blocks


def test_allocation_hands_out_low_ids_and_never_the_null_block():
    bm = BlockManager(num_blocks=5, block_size=BS)
    assert bm.num_free == 4 and bm.num_used == 0
    assert bm.allocate(3) == [1, 2, 3]
    assert bm.num_free == 1 and bm.num_used == 3
    assert bm.can_allocate(1) and not bm.can_allocate(2)
    with pytest.raises(RuntimeError, match="need 2 KV blocks, 1 available"):
        bm.allocate(2)
    assert bm.allocate(1) == [4]
    with pytest.raises(ValueError, match="num_blocks=1"):
        BlockManager(num_blocks=1, block_size=BS)


def test_release_returns_unhashed_blocks_and_refuses_double_release():
    bm = BlockManager(num_blocks=4, block_size=BS)
    blocks = bm.allocate(2)
    bm.share(blocks)  # a forked sequence holds the same blocks
    bm.release(blocks)
    assert bm.num_used == 2  # still referenced by the fork
    bm.release(blocks)
    assert bm.num_used == 0 and bm.num_free == 3
    with pytest.raises(RuntimeError, match="released more often"):
        bm.release([blocks[0]])


def test_prefix_reuse_leaves_the_last_token_to_compute():
    bm = BlockManager(num_blocks=8, block_size=BS)
    prompt = list(range(10, 22))  # 12 tokens: 3 full blocks
    first = _fill(bm, prompt)
    bm.release(first)
    assert bm.num_used == 0 and len(bm.evictable) == 3  # kept for reuse, not freed

    # same 12 tokens: only 2 blocks reused, the last block holds the token whose logits are needed
    assert bm.match_prefix(prompt) == first[:2]
    assert bm.ref[first[0]] == 1 and first[2] in bm.evictable
    # a longer prompt sharing the prefix reuses all 3; a different second block stops the match
    assert bm.match_prefix(prompt + [99]) == first
    assert bm.match_prefix(prompt[:4] + [0, 0, 0, 0, 1]) == first[:1]
    assert bm.hits == 2 + 3 + 1 and bm.queries == 2 + 3 + 2


def test_prefix_caching_off_reuses_nothing():
    bm = BlockManager(num_blocks=8, block_size=BS, enable_prefix_caching=False)
    prompt = list(range(12))
    blocks = _fill(bm, prompt)
    bm.release(blocks)
    assert bm.match_prefix(prompt + [1]) == []
    assert bm.num_free == 7 and not bm.evictable


def test_eviction_takes_free_blocks_first_then_least_recently_released_deepest_first():
    bm = BlockManager(num_blocks=6, block_size=BS)  # 5 usable
    a = _fill(bm, list(range(8)))  # 2 hashed blocks
    b = _fill(bm, list(range(100, 108)))  # 2 hashed blocks
    bm.release(a)  # a released first: its blocks are the LRU ones, tail block before head
    bm.release(b)
    assert list(bm.evictable) == [a[1], a[0], b[1], b[0]]
    assert bm.allocate(1) == [5]  # the never-used free block goes first
    assert bm.allocate(1) == [a[1]]  # then the LRU evictable: a's tail, forgotten
    assert bm.match_prefix(list(range(8)) + [0]) == [a[0]]  # a's head block still hits
    bm.release([a[0]])  # touched again: now the most recently released
    assert list(bm.evictable) == [b[1], b[0], a[0]]
    assert bm.allocate(2) == [b[1], b[0]]
    assert bm.match_prefix(list(range(100, 108)) + [0]) == []  # b was evicted
    assert bm.num_free == 1


def test_register_first_writer_wins():
    bm = BlockManager(num_blocks=4, block_size=BS)
    x, y = bm.allocate(2)
    h = block_hashes([1, 2, 3, 4], BS, 1)[0]
    bm.register(x, h)
    bm.register(y, h)  # same content computed twice: the first block stays the cached one
    assert bm.cached[h] == x and y not in bm.block_hash
    bm.release([x, y])
    assert list(bm.evictable) == [x] and bm.free[-1] == y
