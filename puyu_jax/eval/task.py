"""A worker process: `python -m puyu_jax.eval.task SPEC.json` runs one inference task."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m puyu_jax.eval.task SPEC.json", file=sys.stderr)
        return 2
    from puyu_jax.eval.runner import run_task

    out = run_task(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
