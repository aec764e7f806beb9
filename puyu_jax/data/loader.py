"""The grain input pipeline for training and finetuning on packed sequences.

``MapDataset.source(PackedSource).shuffle(seed).repeat(epochs)[shard_index::shard_count]
.batch(batch_size)`` then ``to_iter_dataset`` (and ``mp_prefetch`` with workers): a seeded
global shuffle (reshuffled every epoch), each host taking every ``shard_count``-th element
of the same global order, fixed-size batches. The iterator's state is a small JSON dict
(`loader_state`) saved with the checkpoint; `restore_loader` resumes at exactly the next
batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import grain

from puyu_jax.data.packed import PackedSource


def make_loader(
    path: str | Path,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    prefetch: int = 4,
    read_threads: int = 4,
) -> grain.DatasetIterator:
    """A grain iterator of batches {"tokens", "segment_ids", "positions"}: int32 [batch_size, seq_len].

    Args:
        path: a directory written by `puyu data tokenize`.
        batch_size: per-host batch size (the last partial batch of a finite run is dropped).
        seed: shuffle seed; the same seed gives the same global order on every host.
        shuffle: global shuffle (reshuffled each epoch).
        num_epochs: passes over the data; None repeats forever.
        shard_index, shard_count: this host's slice, e.g. ``jax.process_index()`` and
            ``jax.process_count()``.
        worker_count: grain worker processes (0 = read in this process with threads).
        prefetch: batches buffered ahead (per worker with workers).
        read_threads: threads reading records in each process.
    """
    return batched_loader(
        grain.MapDataset.source(PackedSource(path)), batch_size=batch_size, seed=seed, shuffle=shuffle,
        num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count, worker_count=worker_count,
        prefetch=prefetch, read_threads=read_threads,
    )


def batched_loader(
    ds: grain.MapDataset,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    prefetch: int = 4,
    read_threads: int = 4,
) -> grain.DatasetIterator:
    """The shuffle / repeat / per-host shard / batch pipeline of `make_loader` over any
    MapDataset of example dicts (arguments as in `make_loader`)."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    ds = ds.batch(batch_size, drop_remainder=True)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=prefetch))
    return iter(it)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bytes):
        return {"__bytes__": x.hex()}
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    return x


def _from_jsonable(x):
    if isinstance(x, dict):
        if set(x) == {"__bytes__"}:
            return bytes.fromhex(x["__bytes__"])
        return {k: _from_jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_jsonable(v) for v in x]
    return x


def loader_state(it: grain.DatasetIterator) -> dict:
    """The iterator's position as a JSON-serializable dict (save it with the checkpoint)."""
    state = _jsonable(it.get_state())
    json.dumps(state)  # fail here, not in the checkpointer
    return state


def restore_loader(it: grain.DatasetIterator, state: dict) -> grain.DatasetIterator:
    """Move a freshly made iterator (same arguments) to a saved position; returns it."""
    it.set_state(_from_jsonable(state))
    return it
