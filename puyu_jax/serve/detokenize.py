"""Incremental detokenization and stop strings.

The output text is re-decoded from the output ids each step (the tokenizer joins
byte-level and sentencepiece pieces correctly only over whole sequences); a trailing
U+FFFD (an incomplete UTF-8 character) and any tail that could still grow into a stop
string are held back from the stream until they resolve.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from puyu_jax.serve.config import GenerationConfig


def find_stop(text: str, stops: Seq[str], start: int) -> tuple[int, str] | None:
    """Earliest (index, stop) of any stop string in text[start:]."""
    best = None
    for s in stops:
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


def held_back(text: str, stops: Seq[str]) -> int:
    """How many trailing characters of text could be the start of a stop string."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                n = max(n, k)
                break
    return n


def update_text(tokenizer, output_ids: list[int], prev_text: str, gen: GenerationConfig) -> tuple[str, str | None, int]:
    """Decodes output_ids and checks stop strings.

    Returns:
      (text, stop string found or None, number of trailing characters not yet safe to emit).
    """
    text = tokenizer.decode(output_ids, skip_special=gen.skip_special_tokens)
    if gen.stop:
        longest = max(len(s) for s in gen.stop)
        hit = find_stop(text, gen.stop, max(0, len(prev_text) - longest))
        if hit is not None:
            i, s = hit
            return text[: i + (len(s) if gen.include_stop_str_in_output else 0)], s, 0
    hold = 1 if text.endswith("\ufffd") else 0
    if gen.stop:
        hold = max(hold, held_back(text, gen.stop))
    return text, None, hold
