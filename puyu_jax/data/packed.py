"""`PackedSource`: random access to packed sequences written by `puyu data tokenize`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FIELDS = ("tokens", "segment_ids", "positions")


def read_index(path: str | Path) -> dict:
    """The ``index.json`` of a packed dataset directory."""
    return json.loads((Path(path) / "index.json").read_text())


def decode_record(raw: bytes, seq_len: int) -> dict[str, np.ndarray]:
    """One record's bytes -> {"tokens", "segment_ids", "positions"}: int32 [seq_len] each."""
    arr = np.frombuffer(raw, dtype=np.int32).reshape(3, seq_len)
    return {k: arr[i].copy() for i, k in enumerate(FIELDS)}


class PackedSource:
    """A grain RandomAccessDataSource over the array_record shards of a packed dataset.

    ``len(src)`` is the number of sequences; ``src[i]`` is a dict of int32 arrays
    ``tokens``, ``segment_ids``, ``positions`` (each [seq_len]), in index order.
    """

    def __init__(self, path: str | Path):
        from grain.sources import ArrayRecordDataSource

        self.path = Path(path)
        self.index = read_index(self.path)
        self.seq_len = int(self.index["seq_len"])
        files = [str(self.path / s["path"]) for s in self.index["shards"]]
        self._source = ArrayRecordDataSource(files)
        if len(self._source) != self.index["num_sequences"]:
            raise ValueError(f"{path}: index.json says {self.index['num_sequences']} sequences, shards hold {len(self._source)}")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return decode_record(self._source[i], self.seq_len)

    def __repr__(self) -> str:
        return f"PackedSource({str(self.path)!r}, sequences={len(self)}, seq_len={self.seq_len})"
