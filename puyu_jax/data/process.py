"""`puyu data process`: read -> per-document stages -> dedup -> shards + report.

Work is split into chunks of `chunk_docs` raw items in input order; a chunk is processed
by `work_chunk` (parse, stages, dedup signatures) in a local process pool, in-process, or
on a Dask cluster — the same function everywhere. The global passes (document dedup,
line dedup) and writing run in the driver over the chunk results in input order, so the
outputs depend only on the config and the input.
"""

from __future__ import annotations

import io
import itertools
import json
import multiprocessing as mp
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from puyu_jax.config import config_hash, save_run_config
from puyu_jax.data import dedup as D
from puyu_jax.data.config import ProcessConfig
from puyu_jax.data.readers import count_items, expand_paths, item_size, iter_items, parse_item
from puyu_jax.data.stages import DocPipeline

KEEP_FIELDS = ("id", "text", "source", "url", "lang", "lang_score", "ppl", "pii")
ZSTD_LEVEL = 3


# ---------------------------------------------------------------------------
# the worker side


_PIPELINES: dict[str, DocPipeline] = {}


def _pipeline(cfg: ProcessConfig) -> DocPipeline:
    key = config_hash(cfg)
    if key not in _PIPELINES:
        _PIPELINES[key] = DocPipeline(cfg)
    return _PIPELINES[key]


def work_chunk(items: list, cfg: ProcessConfig) -> list[dict]:
    """Parse and run the document stages on a chunk of raw items.

    Returns one entry per item, in order: ``{"kind": "kept", "doc", "sig", "in_len"}``,
    ``{"kind": "dropped", "doc", "stage", "reason", "in_len"}`` or
    ``{"kind": "malformed", "source", "index", "reason", "raw"}``.
    """
    pipe = _pipeline(cfg)
    out = []
    for item in items:
        doc, bad = parse_item(item, cfg.input)
        if doc is None:
            raw = item[3]
            raw = raw[:200].decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)[:200]
            out.append({"kind": "malformed", "source": item[1], "index": item[2], "reason": bad, "raw": raw})
            continue
        in_len = len(doc.get("text") or doc.get("html") or "")
        original = doc.get("text") or doc.get("html") or ""
        try:
            dropped = pipe(doc)
        except Exception as e:  # a stage failing on odd input drops that document only
            dropped = ("error", f"{type(e).__name__}")
        if dropped is not None:
            doc["text"] = doc.get("text", original)
            doc.pop("html", None)
            out.append({"kind": "dropped", "doc": doc, "stage": dropped[0], "reason": dropped[1], "in_len": in_len})
        else:
            out.append({"kind": "kept", "doc": doc, "sig": D.signatures(doc["text"], cfg.dedup), "in_len": in_len})
    return out


# ---------------------------------------------------------------------------
# the driver side


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _map_local(chunks: Iterator[list], cfg: ProcessConfig) -> Iterator[list[dict]]:
    workers = cfg.num_workers or os.cpu_count() or 1
    if workers == 1:
        for c in chunks:
            yield work_chunk(c, cfg)
        return
    # spawn: the parent may hold threads (JAX, tokenizers) that make fork unsafe
    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_work_star, ((c, cfg) for c in chunks), chunksize=1)


def _work_star(args):
    return work_chunk(*args)


class _Progress:
    """tqdm bar over documents, with MB/s in the postfix."""

    def __init__(self, total: int | None, enabled: bool):
        self.bar = None
        self.t0, self.bytes = time.perf_counter(), 0
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="doc", desc="process", smoothing=0.1, dynamic_ncols=True)

    def update(self, docs: int, nbytes: int) -> None:
        self.bytes += nbytes
        if self.bar is not None:
            self.bar.update(docs)
            dt = max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{self.bytes / dt / 1e6:.2f} MB/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_process(cfg: ProcessConfig) -> dict:
    """Run one processing job; writes shards, ``dropped.jsonl.zst``, the report and config.

    Returns:
        The report dict (also written to ``report.json``).
    """
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*"):
        old.unlink()
    digest = save_run_config(cfg, out)
    files = expand_paths(cfg.input.paths)
    if not files:
        raise FileNotFoundError("no input files (input.paths is empty or matches nothing)")
    t0 = time.perf_counter()
    total = count_items(cfg.input, files) if cfg.progress else None
    progress = _Progress(total, cfg.progress)
    sizes: list[int] = []

    def sized_chunks():
        for chunk in _chunks(iter_items(cfg.input, files), cfg.chunk_docs):
            sizes.append(sum(item_size(i) for i in chunk))
            yield chunk

    if cfg.engine == "dask":
        from puyu_jax.data.distributed import map_chunks_dask

        results = map_chunks_dask(list(sized_chunks()), cfg)
    else:
        results = _map_local(sized_chunks(), cfg)

    entries: list[dict] = []
    for i, res in enumerate(results):
        entries.extend(res)
        progress.update(len(res), sizes[i] if i < len(sizes) else 0)
    progress.close()
    t_map = time.perf_counter() - t0

    report = _finish(cfg, files, entries, out, digest)
    elapsed = time.perf_counter() - t0
    timing = {
        "seconds": round(elapsed, 3),
        "map_seconds": round(t_map, 3),
        "docs_per_s": round(report["input_records"] / elapsed, 1),
        "mb_per_s": round(sum(sizes) / elapsed / 1e6, 3),
        "engine": cfg.engine,
        "workers": cfg.num_workers or os.cpu_count(),
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    report["timing"] = timing
    return report


def _finish(cfg: ProcessConfig, files: list[Path], entries: list[dict], out: Path, digest: str) -> dict:
    """Global dedup passes, writing and the report (deterministic given the entries)."""
    from puyu_jax.data.report import build_report, write_report

    index = D.DedupIndex(cfg.dedup)
    for e in entries:
        if e["kind"] == "kept":
            hit = index.check(e["doc"]["id"], e["sig"])
            if hit is not None:
                e.update(kind="dropped", stage="dedup", reason=hit[0], dup_of=hit[1])
    line_stats = {"boilerplate_lines": 0, "lines_removed": 0}
    if cfg.dedup.line_min_docs:
        kept = [e for e in entries if e["kind"] == "kept"]
        counts = D.line_counts([e["sig"] for e in kept])
        boiler = {h for h, c in counts.items() if c >= cfg.dedup.line_min_docs}
        line_stats["boilerplate_lines"] = len(boiler)
        for e in kept:
            if not boiler.intersection(e["sig"].get("lines", ())):
                continue
            text, removed = D.strip_lines(e["doc"]["text"], boiler, cfg.dedup.line_min_chars)
            line_stats["lines_removed"] += removed
            if len(text) < cfg.dedup.min_chars_after_line_dedup:
                e.update(kind="dropped", stage="line_dedup", reason="too_short_after_line_dedup")
            else:
                e["doc"]["text"] = text
    shards = _write_kept(cfg, [e["doc"] for e in entries if e["kind"] == "kept"], out)
    _write_dropped(cfg, entries, out / "dropped.jsonl.zst")
    report = build_report(cfg, files, entries, shards, line_stats, digest)
    write_report(report, out)
    return report


def _jsonl_zst(rows: Iterable[dict], path: Path) -> None:
    import zstandard

    buf = io.StringIO()
    for r in rows:
        buf.write(json.dumps(r, ensure_ascii=False) + "\n")
    path.write_bytes(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(buf.getvalue().encode("utf-8")))


def _write_kept(cfg: ProcessConfig, docs: list[dict], out: Path) -> list[dict]:
    n = cfg.output.docs_per_shard
    groups = [docs[i : i + n] for i in range(0, len(docs), n)] or [[]]
    shards = []
    for k, group in enumerate(groups):
        rows = [{f: d[f] for f in KEEP_FIELDS if f in d} for d in group]
        name = f"part-{k:05d}-of-{len(groups):05d}.{cfg.output.format}"
        if cfg.output.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            for r in rows:
                r["pii"] = json.dumps(r.get("pii", {}), sort_keys=True)
            table = pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
            pq.write_table(table, out / name, compression="zstd")
        else:
            _jsonl_zst(rows, out / name)
        shards.append({"path": name, "num_docs": len(rows)})
    return shards


def _write_dropped(cfg: ProcessConfig, entries: list[dict], path: Path) -> None:
    def rows():
        for e in entries:
            if e["kind"] == "malformed":
                yield {"source": e["source"], "index": e["index"], "stage": "read", "reason": e["reason"], "raw": e["raw"]}
            elif e["kind"] == "dropped":
                d = e["doc"]
                r = {"id": d["id"], "source": d["source"], "stage": e["stage"], "reason": e["reason"]}
                if "dup_of" in e:
                    r["dup_of"] = e["dup_of"]
                for k in ("lang", "lang_score", "ppl"):
                    if k in d:
                        r[k] = d[k]
                if cfg.output.keep_dropped_text:
                    r["text"] = d.get("text", "")
                yield r

    _jsonl_zst(rows(), path)


def read_docs(path: str | Path) -> Iterator[dict]:
    """Documents of a processed output directory (its part-* shards in order) or one shard."""
    p = Path(path)
    shards = sorted(p.glob("part-*")) if p.is_dir() else [p]
    for s in shards:
        if s.name.endswith(".parquet"):
            import pyarrow.parquet as pq

            yield from pq.read_table(s).to_pylist()
        else:
            from puyu_jax.data.readers import open_binary

            with open_binary(s) as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)


def dropped_records(out_dir: str | Path) -> list[dict]:
    """The records of a run's ``dropped.jsonl.zst``."""
    import zstandard

    raw = zstandard.ZstdDecompressor().decompress((Path(out_dir) / "dropped.jsonl.zst").read_bytes())
    return [json.loads(l) for l in raw.decode("utf-8").splitlines() if l.strip()]


def stage_order(cfg: ProcessConfig) -> list[str]:
    """Stages in the order a record meets them, for the report."""
    return ["read", *cfg.stages, "error", "dedup", "line_dedup"]


def summarize(entries: list[dict]) -> dict[str, Counter]:
    """Drop counts by stage and reason (malformed under ``read``)."""
    by: dict[str, Counter] = defaultdict(Counter)
    for e in entries:
        if e["kind"] == "malformed":
            by["read"][e["reason"]] += 1
        elif e["kind"] == "dropped":
            by[e["stage"]][e["reason"]] += 1
    return by
