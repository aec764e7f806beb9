"""The per-sample prediction cache: content-hashed answers in append-only JSONL files.

Keys hash (backend name, request kind, request), so a cached answer is reused only for the
very same model and request. Every writer appends to its own file (parallel tasks never
share one) and flushes after each batch, so an interrupted run loses at most one batch;
a reader loads all files of the directory and skips a torn last line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def request_key(backend_name: str, kind: str, payload) -> str:
    """sha256 of the canonical JSON of (backend, kind, payload)."""
    blob = json.dumps([backend_name, kind, payload], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class PredictionCache:
    """Args:
      directory: where the `*.jsonl` files live.
      writer: this process's file name (e.g. the task name).
    """

    def __init__(self, directory: str | Path, writer: str = "cache"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{writer}.jsonl"
        self.data: dict[str, object] = {}
        for f in sorted(self.dir.glob("*.jsonl")):
            for line in f.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a torn write at the end of an interrupted run
                    continue
                self.data[rec["k"]] = rec["v"]
        self.hits = 0

    def get(self, key: str):
        if key in self.data:
            self.hits += 1
            return self.data[key]
        return None

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def put_many(self, items: dict[str, object]) -> None:
        """Stores and appends the items (one flush per call)."""
        if not items:
            return
        self.data.update(items)
        with open(self.path, "a", encoding="utf-8") as f:
            for k, v in items.items():
                f.write(json.dumps({"k": k, "v": v}, ensure_ascii=False) + "\n")
