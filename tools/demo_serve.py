"""The serving stage of `make demo`: start `puyu serve MODEL`, ask one chat question through the
`openai` client (streamed), check the answer is not empty, optionally evaluate the served model
through its OpenAI API with `puyu eval` (PPL datasets via completions with echo + logprobs),
then stop the server with SIGTERM.

    python tools/demo_serve.py demo_out/smollm2 [--port 23334] [--question "..."] [--eval-out DIR]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"puyu serve exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"puyu serve was not ready after {timeout:.0f} s")


def run_eval(url: str, out_dir: str) -> None:
    """`puyu eval` over the served model: ARC-e and PIQA subsets scored by perplexity through the API."""
    from pathlib import Path

    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"models": [{"abbr": "served", "type": "openai", "url": url + "/v1", "model": "demo", "concurrency": 2,
                       "batch_size": 8}],
           "datasets": ["arc-e", "piqa"], "dataset_overrides": ["max_samples=20"], "out_dir": str(out / "runs")}
    (out / "eval.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "puyu_jax.cli", "eval", str(out / "eval.yaml")]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model source for `puyu serve` (e.g. demo_out/smollm2)")
    ap.add_argument("--port", type=int, default=23334)
    ap.add_argument("--question", default="What is the capital of France?")
    ap.add_argument("--startup-timeout", type=float, default=300)
    ap.add_argument("--eval-out", default="", help="also run `puyu eval` (ARC-e and PIQA subsets) against the server")
    args = ap.parse_args(argv)

    import openai

    url = f"http://127.0.0.1:{args.port}"
    cmd = [sys.executable, "-m", "puyu_jax.cli", "serve", args.model, "--port", str(args.port),
           "--served-model-name", "demo", "log_level=warning", "warmup_background=false"]
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.Popen(cmd)
    try:
        wait_healthy(url, proc, args.startup_timeout)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=300)
        print(f"question: {args.question}\nanswer: ", end="", flush=True)
        answer = ""
        for chunk in client.chat.completions.create(model="demo", messages=[{"role": "user", "content": args.question}],
                                                    max_tokens=48, temperature=0, stream=True):
            piece = chunk.choices[0].delta.content or "" if chunk.choices else ""
            answer += piece
            print(piece, end="", flush=True)
        print()
        if not answer.strip():
            print("demo_serve: the server answered with empty text", file=sys.stderr)
            return 1
        if args.eval_out:
            run_eval(url, args.eval_out)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(120)
        print(f"demo OK: the server answered through the OpenAI API and stopped with status {status}")
        return 0 if status == 0 else 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
