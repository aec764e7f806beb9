"""KV block bookkeeping: allocation, reference counts, prefix caching with LRU eviction.

Blocks are ids into the paged pool (block 0 is the null block and never handed out).
A full block whose tokens are known gets a hash chained from its predecessor's
(hash(parent_hash, tokens)); a later sequence with the same token prefix reuses the
block instead of recomputing it. A block whose reference count falls to zero keeps its
contents and its hash and waits in an LRU list: it is reused on a cache hit, or evicted
(forgotten) when a fresh block is needed and the free list is empty.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def block_hashes(token_ids: Sequence[int], block_size: int, n_blocks: int) -> list[int]:
    """Chained hashes of the first `n_blocks` full blocks of token_ids."""
    out, parent = [], None
    for i in range(n_blocks):
        parent = hash((parent, tuple(token_ids[i * block_size: (i + 1) * block_size])))
        out.append(parent)
    return out


class BlockManager:
    """Allocates pool blocks to sequences and shares full blocks by content hash."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 2:
            raise ValueError(f"num_blocks={num_blocks}: need at least 2 (block 0 is reserved)")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = enable_prefix_caching
        self.free: list[int] = list(range(num_blocks - 1, 0, -1))  # pop() hands out low ids first
        self.ref = [0] * num_blocks
        self.block_hash: dict[int, int] = {}  # block -> hash (full, registered blocks)
        self.cached: dict[int, int] = {}  # hash -> block
        self.evictable: OrderedDict[int, None] = OrderedDict()  # ref 0, hashed; LRU first
        self.queries = 0
        self.hits = 0

    # ------------------------------------------------------------------ accounting

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (free or evictable)."""
        return len(self.free) + len(self.evictable)

    @property
    def num_used(self) -> int:
        """Blocks referenced by at least one live sequence."""
        return self.num_blocks - 1 - self.num_free

    def can_allocate(self, n: int) -> bool:
        return n <= self.num_free

    # ------------------------------------------------------------------ allocation

    def _fresh(self) -> int:
        if self.free:
            block = self.free.pop()
        elif self.evictable:
            block, _ = self.evictable.popitem(last=False)
            del self.cached[self.block_hash.pop(block)]
        else:
            raise RuntimeError("KV block pool exhausted")
        self.ref[block] = 1
        return block

    def allocate(self, n: int) -> list[int]:
        """n fresh blocks (raises if fewer are available: check `can_allocate` first)."""
        if n > self.num_free:
            raise RuntimeError(f"need {n} KV blocks, {self.num_free} available")
        return [self._fresh() for _ in range(n)]

    def match_prefix(self, token_ids: Sequence[int]) -> list[int]:
        """Cached blocks for the longest cached prefix of token_ids, referenced for the caller.

        At least the last token is always left to compute (its logits are needed), so a
        block is only reused if it ends before the final token.
        """
        if not self.prefix_caching:
            return []
        n_full = (len(token_ids) - 1) // self.block_size
        blocks = []
        for h in block_hashes(token_ids, self.block_size, n_full):
            self.queries += 1
            block = self.cached.get(h)
            if block is None:
                break
            self.hits += 1
            if self.ref[block] == 0:
                del self.evictable[block]
            self.ref[block] += 1
            blocks.append(block)
        return blocks

    def register(self, block: int, h: int) -> None:
        """Marks a block as full with content hash h (first writer wins)."""
        if not self.prefix_caching or block in self.block_hash or h in self.cached:
            return
        self.block_hash[block] = h
        self.cached[h] = block

    def share(self, blocks: Sequence[int]) -> None:
        """Adds a reference to each block (a forked sequence shares its parent's blocks)."""
        for b in blocks:
            self.ref[b] += 1

    def release(self, blocks: Sequence[int]) -> None:
        """Drops one reference from each block; unreferenced blocks become free or evictable."""
        for b in reversed(blocks):  # tail blocks first, so the LRU evicts the deepest prefix first
            self.ref[b] -= 1
            if self.ref[b] < 0:
                raise RuntimeError(f"block {b} released more often than referenced")
            if self.ref[b] == 0:
                if b in self.block_hash:
                    self.evictable[b] = None
                else:
                    self.free.append(b)
