"""`puyu chat MODEL`: an interactive terminal chat with history and streamed answers.

Commands at the prompt: /reset (forget the history), /system TEXT (set the system
message and reset), /exit (or Ctrl-D).
"""

from __future__ import annotations

import argparse
import sys
import time


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal (history, streaming)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="smollm2, a .gguf, a puyu / HF directory or a quantized directory")
    p.add_argument("--system", default="", help="system message")
    p.add_argument("-t", "--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("-n", "--max-new-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quant", choices=["none", "int4", "w8a8"], default="none")
    p.add_argument("--kv", choices=["auto", "int8"], default="auto")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--stats", action="store_true", help="print tokens and speed after each answer")
    p.set_defaults(fn=_cmd_chat)


def chat_loop(pipe, gen, *, system: str = "", read=input, write=None, stats: bool = False) -> list[dict]:
    """Reads user turns with `read` until /exit or EOF; streams each answer to `write`.

    Returns the conversation (messages) at exit.
    """
    write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = read()
        except EOFError:
            write("\n")
            return messages
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return messages
        if text == "/reset":
            messages = [m for m in messages if m["role"] == "system"]
            write("(history cleared)\n")
            continue
        if text.startswith("/system"):
            system = text[len("/system"):].strip()
            messages = [{"role": "system", "content": system}] if system else []
            write("(system message set; history cleared)\n")
            continue
        messages.append({"role": "user", "content": text})
        ids = pipe.encode_chat(messages)
        t0 = time.perf_counter()
        answer, n = [], 0
        for r in pipe.stream(ids, gen):
            write(r.text)
            answer.append(r.text)
            n += len(r.token_ids)
        write("\n")
        if stats:
            dt = time.perf_counter() - t0
            write(f"[{len(ids)} prompt tokens, {n} new tokens, {n / dt:.1f} tok/s]\n")
        messages.append({"role": "assistant", "content": "".join(answer)})


def _cmd_chat(args) -> int:
    from puyu_jax.serve.config import GenerationConfig
    from puyu_jax.serve.pipeline import pipeline

    pipe = pipeline(args.model, quant=None if args.quant == "none" else args.quant,
                    kv=None if args.kv == "auto" else args.kv, tp=args.tp)
    if pipe.tokenizer is None:
        print(f"error: {args.model!r} has no tokenizer; chat needs one", file=sys.stderr)
        return 2
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           seed=args.seed)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model} — /reset, /system TEXT, /exit")

    def read() -> str:
        return input(">>> " if interactive else "")

    chat_loop(pipe, gen, system=args.system, read=read, stats=args.stats)
    return 0
