"""The Python interpreter tool: model-written code in the subprocess sandbox."""

from __future__ import annotations

import threading
from typing import Annotated

from puyu_jax.agent.tool import Tool
from puyu_jax.agent.tools.sandbox import Sandbox, SandboxLimits, check_sandbox, run_code

__all__ = ["PythonInterpreter"]


class PythonInterpreter(Tool):
    """Runs Python in a sandbox: `solution()` when the code defines it, else the cell.

    Args:
      limits: time, memory, CPU, file-size and output limits of every run.
      stateful: keep one interpreter across calls (a notebook session) instead of a fresh one each call.

    Raises `SandboxUnavailable` at once where the namespaced sandbox cannot run (unless `limits.unsafe`).
    """

    name = "python"
    description = (
        "Runs Python code in a sandbox and returns what it prints and its value. Define a function "
        "`solution()` returning the answer, or write a cell whose last expression is shown. No network; "
        "files may only be written in the current directory."
    )

    def __init__(self, limits: SandboxLimits = SandboxLimits(), stateful: bool = False):
        check_sandbox(limits)
        self.limits = limits
        self.stateful = stateful
        self._session: Sandbox | None = None
        self._lock = threading.Lock()

    def run(self, code: Annotated[str, "Python source code"]) -> str:
        code = strip_code_fence(code)
        if not self.stateful:
            return run_code(code, self.limits).text()
        with self._lock:
            if self._session is None:
                self._session = Sandbox(self.limits)
            session = self._session
        return session.run(code).text()

    def close(self) -> None:
        """Ends the stateful session, if any."""
        if self._session is not None:
            self._session.close()
            self._session = None


def strip_code_fence(code: str) -> str:
    """The code inside a ```python ... ``` fence (models often add one), else the text as is."""
    s = code.strip()
    if s.startswith("```"):
        s = s.split("\n", 1)[1] if "\n" in s else ""
        if s.rstrip().endswith("```"):
            s = s.rstrip()[:-3]
    return s.strip("\n")
