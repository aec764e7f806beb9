"""The `text` training source: one text file, a tokenizer, fixed-length windows, a grain loader.

Packed corpora written by `puyu data tokenize` use `puyu_jax.data.loader` instead; both
yield the same batch dict (tokens, segment_ids, positions: int32 [batch, seq_len]).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grain
import numpy as np

from puyu_jax.train.config import DataConfig

SHIPPED_TEXT = Path(__file__).resolve().parent / "assets" / "tinyshakespeare.txt"


def train_sentencepiece(text_path: Path, vocab_size: int, out_dir: Path):
    """A byte-fallback BPE sentencepiece model trained on `text_path` (single thread: deterministic)."""
    import sentencepiece as spm

    from puyu_jax.tokenizer import load_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "tokenizer"
    if not (out_dir / "tokenizer.model").exists():
        spm.SentencePieceTrainer.train(
            input=str(text_path), model_prefix=str(prefix), vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, character_coverage=1.0, num_threads=1, bos_id=1, eos_id=2, unk_id=0,
            pad_id=-1, split_digits=True, max_sentence_length=1 << 16, minloglevel=2,
        )
    return load_tokenizer(out_dir)


def text_windows(cfg: DataConfig, run_dir: Path) -> tuple[np.ndarray, object]:
    """Tokenizes the text once (cached in the run dir) and cuts it into [n, seq_len] windows."""
    path = Path(cfg.path) if cfg.path else SHIPPED_TEXT
    if not path.exists():
        raise FileNotFoundError(f"data.path={str(path)!r} does not exist")
    if cfg.tokenizer:
        from puyu_jax.pretrained import resolve
        from puyu_jax.tokenizer import load_tokenizer

        kind, p = resolve(cfg.tokenizer) if not Path(cfg.tokenizer).exists() else ("path", Path(cfg.tokenizer))
        tok = load_tokenizer(p / "tokenizer" if (p / "tokenizer").is_dir() else p)
    else:
        tok = train_sentencepiece(path, cfg.vocab_size, run_dir / "tokenizer")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    cache = run_dir / f"tokens-{digest}-{tok.vocab_size}.npy"
    if cache.exists():
        ids = np.load(cache)
    else:
        ids = np.asarray(tok.encode(path.read_text(encoding="utf-8"), add_bos=True), np.int32)
        np.save(cache, ids)
    n = len(ids) // cfg.seq_len
    if n < 1:
        raise ValueError(f"{path} has {len(ids)} tokens, fewer than seq_len={cfg.seq_len}")
    return ids[: n * cfg.seq_len].reshape(n, cfg.seq_len), tok


def text_loader(windows: np.ndarray, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1):
    """The packed-data loader's pipeline (seeded global shuffle, repeat, per-host shard,
    batch; checkpointable) over the windows, each one document."""
    from puyu_jax.data.loader import batched_loader

    seq_len = windows.shape[1]
    positions = np.arange(seq_len, dtype=np.int32)
    ones = np.ones(seq_len, np.int32)
    ds = grain.MapDataset.source(windows).map(lambda w: {"tokens": w, "segment_ids": ones, "positions": positions})
    return batched_loader(ds, batch_size=batch_size // shard_count, seed=seed,
                          shard_index=shard_index, shard_count=shard_count)
