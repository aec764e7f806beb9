"""Input readers: files -> raw items -> documents, with malformed input counted, not raised.

A raw item is ``(kind, source, index, payload)``; `parse_item` turns it into a document
dict (``id``, ``source``, ``text`` or ``html``) or a malformed-record reason. Reading
(cheap) happens in the driver; parsing happens in the workers.

A file that breaks mid-way keeps the records read before the break and adds one item
for the break: ``damaged_file`` when a compressed stream ends early (a truncated .gz or
.zst), ``unreadable_file`` for any other read error; its index is the number of records
read from that file before the damage.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

from puyu_jax.data.config import InputConfig

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text", ".md")
HTML_SUFFIXES = (".html", ".htm")
Item = tuple[str, str, int, object]


def expand_paths(paths: tuple[str, ...] | list[str]) -> list[Path]:
    """Files named by `paths` (files, directories searched recursively, globs), sorted, unique."""
    out: list[Path] = []
    for p in paths:
        q = Path(p).expanduser()
        if q.is_dir():
            out += [f for f in sorted(q.rglob("*")) if f.is_file() and not f.name.startswith(".")]
        elif any(ch in p for ch in "*?["):
            out += [Path(f) for f in sorted(glob.glob(str(q), recursive=True)) if Path(f).is_file()]
        elif q.is_file():
            out.append(q)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    seen, uniq = set(), []
    for f in out:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            uniq.append(f)
    return uniq


def file_format(path: Path, fmt: str = "auto") -> str:
    """jsonl, parquet, text or html, from `fmt` or the file suffixes."""
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".zst", ".zstd"):
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in JSON_SUFFIXES:
        return "jsonl"
    if last == ".parquet":
        return "parquet"
    if last in HTML_SUFFIXES:
        return "html"
    return "text"


class _ZstdReader(io.RawIOBase):
    """The decompressed bytes of a .zst file (every frame in it).

    Raises EOFError when the file ends inside a frame (truncated), like `gzip` does;
    zstandard's own stream reader just stops there without a word.
    """

    def __init__(self, path: Path):
        import zstandard

        self._file = open(path, "rb")
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._out = bytearray()
        self._in_frame = False
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out and not self._done:
            chunk = self._file.read(1 << 17)
            if not chunk:
                if self._in_frame:
                    raise EOFError("Compressed file ended before the end of its zstd frame was reached")
                self._done = True
                break
            while chunk:
                self._in_frame = True
                self._out += self._obj.decompress(chunk)
                chunk = b""
                if self._obj.eof:  # a frame ended: the next one (if any) starts in its unused data
                    chunk = self._obj.unused_data
                    self._obj = self._dctx.decompressobj()
                    self._in_frame = False
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        del self._out[:n]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def open_binary(path: Path) -> io.BufferedIOBase:
    """Open a file for reading bytes, decompressing .gz and .zst transparently.

    A truncated .gz or .zst raises EOFError when the read reaches the damage.
    """
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 17)
    return open(path, "rb")


def iter_items(cfg: InputConfig, files: list[Path]) -> Iterator[Item]:
    """Raw items of all files in order. A file that fails mid-way yields a ``damaged`` or ``broken`` item
    (indexed by the number of records read from it before the failure) after the records it gave."""
    for path in files:
        fmt = file_format(path, cfg.format)
        src = str(path)
        n = 0  # records yielded from this file
        try:
            for item in _file_items(path, src, fmt, cfg.text_split):
                yield item
                n += 1
        except EOFError as e:  # a compressed stream cut short
            yield ("damaged", src, n, f"{type(e).__name__}: {e}")
        except Exception as e:  # corrupt archive, unreadable parquet, I/O error
            yield ("broken", src, n, f"{type(e).__name__}: {e}")


def _file_items(path: Path, src: str, fmt: str, text_split: str) -> Iterator[Item]:
    if fmt == "jsonl":
        with open_binary(path) as f:
            for i, line in enumerate(f):
                if line.strip():
                    yield ("jsonl", src, i, line)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        i = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield ("record", src, i, row)
                i += 1
    elif fmt == "html":
        with open_binary(path) as f:
            yield ("html", src, 0, f.read())
    else:
        data, damage = bytearray(), None
        with open_binary(path) as f:
            try:
                while chunk := f.read1(1 << 16):  # read1: what decompresses before the damage comes back first
                    data += chunk
            except EOFError as e:  # keep the documents before the damage, then report it
                damage = e
        yield from _text_items(src, bytes(data), text_split)
        if damage is not None:
            raise damage


def _text_items(src: str, data: bytes, split: str) -> Iterator[Item]:
    if split == "file":
        yield ("text", src, 0, data)
        return
    sep = b"\n" if split == "line" else None
    if sep is not None:
        parts = data.split(sep)
    else:
        import re

        parts = re.split(rb"\n[ \t\r]*\n", data)
    for i, part in enumerate(parts):
        if part.strip():
            yield ("text", src, i, part)


def count_items(cfg: InputConfig, files: list[Path]) -> int:
    """Number of raw items (for the progress bar); cheap relative to processing."""
    n = 0
    for path in files:
        fmt = file_format(path, cfg.format)
        try:
            if fmt == "jsonl":
                with open_binary(path) as f:
                    n += sum(1 for line in f if line.strip())
            elif fmt == "parquet":
                import pyarrow.parquet as pq

                n += pq.ParquetFile(path).metadata.num_rows
            elif fmt == "html":
                n += 1
            else:
                with open_binary(path) as f:
                    n += sum(1 for _ in _text_items("", f.read(), cfg.text_split))
        except Exception:
            n += 1
    return n


def item_size(item: Item) -> int:
    """Bytes of an item's payload (for MB/s)."""
    payload = item[3]
    if isinstance(payload, (bytes, str)):
        return len(payload)
    if isinstance(payload, dict):
        return sum(len(v) for v in payload.values() if isinstance(v, (str, bytes)))
    return 0


def _decode(payload) -> str:
    return payload if isinstance(payload, str) else payload.decode("utf-8")


def parse_item(item: Item, cfg: InputConfig) -> tuple[dict | None, str | None]:
    """(document, None) or (None, malformed reason). Never raises on bad input."""
    kind, src, idx, payload = item
    base_id = f"{Path(src).name}:{idx}"
    if kind == "damaged":
        return None, "damaged_file"
    if kind == "broken":
        return None, "unreadable_file"
    if kind in ("text", "html"):
        try:
            text = _decode(payload)
        except UnicodeDecodeError:
            return None, "bad_utf8"
        key = "html" if kind == "html" else "text"
        return {"id": base_id, "source": src, key: text}, None
    if kind == "jsonl":
        try:
            rec = json.loads(_decode(payload))
        except UnicodeDecodeError:
            return None, "bad_utf8"
        except json.JSONDecodeError:
            return None, "bad_json"
    else:
        rec = payload
    if not isinstance(rec, dict):
        return None, "not_an_object"
    doc = {"id": str(rec.get(cfg.id_key) or base_id), "source": src}
    if cfg.html_key and isinstance(rec.get(cfg.html_key), str) and rec[cfg.html_key].strip():
        doc["html"] = rec[cfg.html_key]
    else:
        text = rec.get(cfg.text_key)
        if text is None:
            return None, "missing_text"
        if not isinstance(text, str):
            return None, "text_not_a_string"
        doc["text"] = text
    if isinstance(rec.get("url"), str):
        doc["url"] = rec["url"]
    return doc, None
