"""The built-in tools, and `load_tools` to build them by name (for the CLI and the tool server)."""

from __future__ import annotations

from pathlib import Path

from puyu_jax.agent.tool import Tool
from puyu_jax.agent.tools.calculator import Calculator, calculate
from puyu_jax.agent.tools.media import OCR, ImageCrop, ImageDrawBox, ImageInfo, ImageResize, TextToSpeech
from puyu_jax.agent.tools.python import PythonInterpreter
from puyu_jax.agent.tools.sandbox import (CellResult, Sandbox, SandboxLimits, SandboxUnavailable, check_sandbox,
                                          run_code)
from puyu_jax.agent.tools.search import DocumentSearch

__all__ = [
    "Calculator", "calculate", "OCR", "ImageCrop", "ImageDrawBox", "ImageInfo", "ImageResize", "TextToSpeech",
    "PythonInterpreter", "CellResult", "Sandbox", "SandboxLimits", "SandboxUnavailable", "check_sandbox", "run_code",
    "DocumentSearch",
    "TOOL_NAMES", "load_tools",
]

#: Names accepted by `load_tools` (`image` stands for the four image tools).
TOOL_NAMES = ("python", "python_session", "calculator", "search", "tts", "ocr", "image")


def load_tools(
    names: str | list[str] | tuple[str, ...],
    *,
    search_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    limits: SandboxLimits = SandboxLimits(),
) -> list[Tool]:
    """Builds tools from names (a list or a comma-separated string).

    Args:
      names: from TOOL_NAMES.
      search_dir: the folder indexed by `search` (required for it).
      out_dir: where file-producing tools write (a temporary folder each when None).
      limits: sandbox limits of the Python tools.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    tools: list[Tool] = []
    for n in names:
        if n == "python":
            tools.append(PythonInterpreter(limits))
        elif n == "python_session":
            tools.append(PythonInterpreter(limits, stateful=True))
        elif n == "calculator":
            tools.append(Calculator())
        elif n == "search":
            if search_dir is None:
                raise ValueError("the search tool needs a folder of documents (search_dir)")
            tools.append(DocumentSearch(search_dir))
        elif n == "tts":
            tools.append(TextToSpeech(out_dir))
        elif n == "ocr":
            tools.append(OCR())
        elif n == "image":
            tools += [ImageResize(out_dir), ImageCrop(out_dir), ImageDrawBox(out_dir), ImageInfo()]
        else:
            raise ValueError(f"unknown tool {n!r}; known: {', '.join(TOOL_NAMES)}")
    seen = [t.name for t in tools]
    dupes = sorted({x for x in seen if seen.count(x) > 1})
    if dupes:
        raise ValueError(f"tool(s) {dupes} given twice")
    return tools
