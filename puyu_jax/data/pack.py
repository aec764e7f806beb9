"""`puyu data tokenize`: documents -> fixed-length packed sequences in array_record shards.

Each record is ``np.stack([tokens, segment_ids, positions]).astype(np.int32).tobytes()``
(shape [3, seq_len]): segment id 0 is padding, documents are numbered 1.. within a
sequence, positions restart at 0 for every document, and every document ends with eos.
A document that does not fit in the space left starts a new sequence; one longer than
`seq_len` is cut into `seq_len` pieces (each its own segment). ``index.json`` describes
the shards (the contract the pretrain code reads).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from puyu_jax.assets import SMOLLM2, find_smollm2_gguf
from puyu_jax.data.config import TokenizeConfig
from puyu_jax.tokenizer import Tokenizer, load_tokenizer

INDEX = "index.json"


def pack_sequences(docs: Iterable[list[int]], seq_len: int, pad_id: int) -> Iterator[np.ndarray]:
    """Greedy in-order packing of token lists into int32 arrays of shape [3, seq_len]."""
    tokens: list[int] = []
    segs: list[int] = []
    pos: list[int] = []
    seg = 0

    def flush() -> np.ndarray:
        pad = seq_len - len(tokens)
        return np.array([tokens + [pad_id] * pad, segs + [0] * pad, pos + [0] * pad], dtype=np.int32)

    for doc in docs:
        for start in range(0, len(doc), seq_len):
            piece = doc[start : start + seq_len]
            if len(tokens) + len(piece) > seq_len:
                yield flush()
                tokens, segs, pos, seg = [], [], [], 0
            seg += 1
            tokens += piece
            segs += [seg] * len(piece)
            pos += range(len(piece))
    if tokens:
        yield flush()


def resolve_tokenizer(name: str) -> Tokenizer:
    """A `Tokenizer` from a directory, a .gguf file, or ``smollm2`` (the packaged GGUF)."""
    return load_tokenizer(find_smollm2_gguf() if name == SMOLLM2 else name)


def iter_texts(cfg: TokenizeConfig) -> Iterator[str]:
    """Texts of the inputs in order: processed output dirs, or jsonl(.gz/.zst)/parquet files."""
    from puyu_jax.data.process import read_docs
    from puyu_jax.data.readers import expand_paths, file_format, open_binary

    for inp in cfg.inputs:
        p = Path(inp)
        if p.is_dir() and any(p.glob("part-*")):
            for d in read_docs(p):
                yield d[cfg.text_key]
            continue
        for f in expand_paths([inp]):
            fmt = file_format(f)
            if fmt == "parquet":
                import pyarrow.parquet as pq

                yield from (r[cfg.text_key] for r in pq.read_table(f, columns=[cfg.text_key]).to_pylist())
            elif fmt == "jsonl":
                with open_binary(f) as fh:
                    for line in fh:
                        if line.strip():
                            yield json.loads(line)[cfg.text_key]
            else:
                yield f.read_text(encoding="utf-8")


def write_packed(sequences: Iterable[np.ndarray], out_dir: str | Path, per_shard: int) -> list[dict]:
    """Write [3, seq_len] int32 arrays to ``packed-NNNNN-of-NNNNN.array_record`` shards."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("packed-*"):
        old.unlink()
    tmp, counts = [], []
    writer = None
    for seq in sequences:
        if writer is None or counts[-1] == per_shard:
            if writer is not None:
                writer.close()
            tmp.append(out / f"packed-{len(tmp):05d}.tmp")
            writer = ArrayRecordWriter(str(tmp[-1]), "group_size:1")
            counts.append(0)
        writer.write(seq.tobytes())
        counts[-1] += 1
    if writer is not None:
        writer.close()
    shards = []
    for i, (t, n) in enumerate(zip(tmp, counts)):
        name = f"packed-{i:05d}-of-{len(tmp):05d}.array_record"
        t.rename(out / name)
        shards.append({"path": name, "num_records": n})
    return shards


def run_tokenize(cfg: TokenizeConfig) -> dict:
    """Tokenize, pack and write shards plus ``index.json``; returns the index."""
    tok = resolve_tokenizer(cfg.tokenizer)
    eos = tok.eos_id
    if eos is None:
        raise ValueError(f"tokenizer {cfg.tokenizer!r} has no eos token")
    pad = eos if cfg.pad_id < 0 else cfg.pad_id
    stats = {"docs": 0, "tokens": 0}

    def docs() -> Iterator[list[int]]:
        for text in iter_texts(cfg):
            ids = tok.encode(text, add_bos=cfg.add_bos, allow_special=False) + [eos]
            stats["docs"] += 1
            stats["tokens"] += len(ids)
            yield ids

    shards = write_packed(pack_sequences(docs(), cfg.seq_len, pad), cfg.out_dir, cfg.sequences_per_shard)
    index = {
        "seq_len": cfg.seq_len,
        "num_sequences": sum(s["num_records"] for s in shards),
        "shards": shards,
        "tokenizer": cfg.tokenizer,
        "vocab_size": tok.vocab_size,
        "eos_id": eos,
        "num_tokens": stats["tokens"],
        "num_documents": stats["docs"],
        "pad_id": pad,
    }
    (Path(cfg.out_dir) / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    from puyu_jax.config import save_run_config

    save_run_config(cfg, cfg.out_dir)
    return index
