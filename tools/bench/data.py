"""Benchmark: the clean + dedup pipeline on >= 50 MB of web text, against datatrove
running the equivalent stages on the same input in the same run; then the grain loader
against what a training step consumes.

    .venv/bin/python tools/bench/data.py                 # 50 MB, all cores, with the peer
    .venv/bin/python tools/bench/data.py --mb 10 --no-peer

Input: c4_demo.jsonl (../shared/data/pretrain, or the 120-doc test sample) repeated with
perturbations: each copy has 1-12% of its words replaced or deleted, so part of the copies
are near-duplicates at Jaccard 0.7 and part are not; one in ten is an exact copy.
Stages compared (both sides): ftfy normalization, Gopher quality + repetition filters,
MinHash near-dup dedup (5-gram words, 16 bands x 8 rows). datatrove uses its
LocalPipelineExecutor with the same number of tasks/workers, a regex word tokenizer
(its English default, NLTK punkt, is downloaded at run time) and its 4-step MinHash
(signatures, buckets, clusters, filter).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SHARED_C4 = REPO.parent / "shared" / "data" / "pretrain" / "c4_demo.jsonl"
SAMPLE_C4 = REPO / "tests" / "data" / "fixtures" / "c4_sample.jsonl"
WORD_RE = re.compile(r"\w+")


def make_input(path: Path, mb: float, seed: int = 0) -> tuple[int, int]:
    """Write the perturbed corpus; returns (documents, bytes)."""
    src = SHARED_C4 if SHARED_C4.is_file() else SAMPLE_C4
    docs = [json.loads(l)["text"] for l in src.read_text(encoding="utf-8").splitlines() if l.strip()]
    rng = random.Random(seed)
    fillers = "the a new great local best our your one more very".split()
    n = size = 0
    with path.open("w", encoding="utf-8") as f:
        rep = 0
        while size < mb * 1e6:
            for i, text in enumerate(docs):
                if rep and rng.random() >= 0.1:
                    words = text.split(" ")
                    for _ in range(max(1, int(len(words) * rng.uniform(0.01, 0.12)))):
                        j = rng.randrange(len(words))
                        if rng.random() < 0.5:
                            words[j] = rng.choice(fillers)
                        elif len(words) > 1:
                            del words[j]
                    text = " ".join(words)
                line = json.dumps({"id": f"r{rep}-{i}", "text": text}, ensure_ascii=False) + "\n"
                f.write(line)
                n += 1
                size += len(line.encode("utf-8"))
            rep += 1
    return n, size


def run_ours(inp: Path, out: Path, workers: int) -> dict:
    from puyu_jax.config import load_config
    from puyu_jax.data.config import ProcessConfig
    from puyu_jax.data.process import run_process

    cfg = load_config(ProcessConfig, {
        "input": {"paths": [str(inp)]}, "stages": ["normalize", "rules"],
        "dedup": {"exact": False, "near": True, "ngram": 5, "bands": 16, "rows": 8, "threshold": 0.7},
        "output": {"dir": str(out)}, "num_workers": workers, "progress": True, "chunk_docs": 512,
    })
    t = time.perf_counter()
    r = run_process(cfg)
    return {"seconds": time.perf_counter() - t, "kept": r["kept"], "stages": r["stages"]}


def _regex_tokenizer():
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexTokenizer(WordTokenizer):
        """Offline stand-in for NLTK punkt: words = \\w+ runs, sentences split on . ! ?"""

        def word_tokenize(self, text):
            return WORD_RE.findall(text)

        def sent_tokenize(self, text):
            return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]

        def span_tokenize(self, text):
            return [m.span() for m in re.finditer(r"[^.!?]+[.!?]*", text)]

    return RegexTokenizer("en")


def run_datatrove(inp: Path, work: Path, workers: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import FTFYFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    tok = _regex_tokenizer()
    from datatrove.utils.hashing import HashConfig

    # datatrove's xxhash path passes str to xxhash 4.x, which wants bytes: use its sha1 hashing
    mh = MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=8, hash_config=HashConfig(precision=64, hash_fc="sha1"))
    shards = work / "in"
    shards.mkdir(parents=True)
    # split the input into one file per task so that datatrove can parallelize the reading
    lines = inp.read_text(encoding="utf-8").splitlines(keepends=True)
    for k in range(workers):
        (shards / f"{k:03d}.jsonl").write_text("".join(lines[k::workers]), encoding="utf-8")
    t = time.perf_counter()
    steps = [
        [JsonlReader(str(shards)), FTFYFormatter(), GopherRepetitionFilter(language=tok), GopherQualityFilter(language=tok),
         JsonlWriter(str(work / "filtered"), compression=None),
         ],
    ]
    LocalPipelineExecutor(steps[0], tasks=workers, workers=workers, logging_dir=str(work / "logs1")).run()
    LocalPipelineExecutor([JsonlReader(str(work / "filtered")),
                           MinhashDedupSignature(str(work / "sigs"), config=mh, language=tok)],
                          tasks=workers, workers=workers, logging_dir=str(work / "logs2")).run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mh)],
                          tasks=mh.num_buckets, workers=workers, logging_dir=str(work / "logs3")).run()
    LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=mh)],
                          tasks=1, logging_dir=str(work / "logs4")).run()
    LocalPipelineExecutor([JsonlReader(str(work / "filtered")), MinhashDedupFilter(str(work / "remove")),
                           JsonlWriter(str(work / "out"))],
                          tasks=workers, workers=workers, logging_dir=str(work / "logs5")).run()
    seconds = time.perf_counter() - t
    kept = sum(1 for f in (work / "out").rglob("*.jsonl*") for _ in _read_any(f))
    return {"seconds": seconds, "kept": kept}


def _read_any(path: Path):
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from (l for l in f if l.strip())


def bench_loader(clean: Path, work: Path, seq_len: int, batch: int, steps: int) -> dict:
    from puyu_jax.config import load_config
    from puyu_jax.data.config import TokenizeConfig
    from puyu_jax.data.loader import make_loader
    from puyu_jax.data.pack import run_tokenize

    t = time.perf_counter()
    index = run_tokenize(load_config(TokenizeConfig, {"inputs": [str(clean)], "out_dir": str(work / "packed"),
                                                      "seq_len": seq_len, "sequences_per_shard": 2000}))
    t_tok = time.perf_counter() - t
    it = make_loader(work / "packed", batch_size=batch, seed=0)
    next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    dt = time.perf_counter() - t
    return {"tokenize_s": t_tok, "tokens": index["num_tokens"], "sequences": index["num_sequences"],
            "batches_per_s": steps / dt, "tokens_per_s": steps * batch * seq_len / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50.0, help="input size in MB")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="processes for both pipelines")
    ap.add_argument("--work", default="/tmp/puyu-bench-data", help="scratch directory (emptied)")
    ap.add_argument("--no-peer", action="store_true", help="skip datatrove")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    inp = work / "input.jsonl"
    n, size = make_input(inp, args.mb)
    w = args.workers
    print(f"input: {n} docs, {size / 1e6:.1f} MB; {w} worker(s)")

    ours = run_ours(inp, work / "ours", w)
    line = lambda name, r: (f"{name:>10}: {r['seconds']:7.1f} s  {n / r['seconds']:8.0f} docs/s  "
                            f"{size / r['seconds'] / 1e6:6.2f} MB/s  per core: {n / r['seconds'] / w:7.0f} docs/s "
                            f"{size / r['seconds'] / 1e6 / w:5.2f} MB/s  kept {r['kept']}")
    print(line("puyu", ours))
    if not args.no_peer:
        peer = run_datatrove(inp, work / "datatrove", w)
        print(line("datatrove", peer))
        print(f"     ratio: puyu is {peer['seconds'] / ours['seconds']:.2f}x datatrove's throughput")

    lo = bench_loader(work / "ours", work, args.seq_len, args.batch, steps=200)
    # what training consumes: 6 * params FLOPs per token
    need_cpu = 170e9 / (6 * 135e6)  # SmolLM2-135M on this CPU (~170 GFLOP/s, KNOWN_GOOD)
    need_h100 = 8 * 989e12 * 0.4 / (6 * 7e9)  # a 7B model on 8 H100s at 40% MFU (bf16 dense)
    print(f"    loader: {lo['batches_per_s']:.0f} batches/s of {args.batch}x{args.seq_len} = {lo['tokens_per_s'] / 1e6:.2f} M tokens/s "
          f"(packed {lo['tokens']} tokens into {lo['sequences']} sequences in {lo['tokenize_s']:.1f} s)")
    print(f"            training consumes ~{need_cpu:.0f} tokens/s (135M on this CPU) -> {lo['tokens_per_s'] / need_cpu:.0f}x headroom; "
          f"~{need_h100 / 1e3:.0f}k tokens/s (7B, 8xH100, 40% MFU) -> {lo['tokens_per_s'] / need_h100:.1f}x headroom")


if __name__ == "__main__":
    main()
