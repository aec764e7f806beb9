"""A subprocess sandbox for model-written Python.

Each `Sandbox` is one fresh `python -I -B` child (see `_sandbox_child.py`) in its own
temporary working directory, process group and, when the host allows it, network namespace.

What is enforced, and by whom:

  * by the OS: wall-clock time per cell (the host kills the whole process group), CPU time
    (RLIMIT_CPU), address space (RLIMIT_AS), file size (RLIMIT_FSIZE), no core dumps, process
    count (RLIMIT_NPROC, non-root only); no network when `unshare -n` (or `unshare -rn`
    for a non-root user) works here: the child then sees only a downed loopback;
  * by the child interpreter's audit hook: no sockets, no new processes, no signals, no
    raising limits, no writes/deletes/renames outside the working directory;
  * by the host: a stripped environment (PATH, HOME and TMPDIR = the working directory,
    single-threaded BLAS), output capped at `output_chars`.

The audit hook is a second line, not a wall: C code (ctypes, extensions) can get round it.
For untrusted code at scale, run the tool server inside a container or VM as well.
"""

from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SandboxLimits", "CellResult", "Sandbox", "run_code", "network_isolation"]

CHILD = Path(__file__).with_name("_sandbox_child.py")


@dataclass(frozen=True)
class SandboxLimits:
    """Per-cell limits (cpu_seconds is per session: RLIMIT_CPU counts the process's whole life)."""

    timeout_s: float = 10.0  # wall clock per cell
    cpu_seconds: int = 60
    memory_mb: int = 1024
    file_mb: int = 64
    output_chars: int = 8000
    nproc: int = 64  # enforced for non-root users only
    isolate_network: bool = True


@dataclass(frozen=True)
class CellResult:
    """What one cell did. `error` holds the traceback, a time-out or the child's death."""

    stdout: str = ""
    result: str | None = None
    error: str | None = None
    truncated: bool = False
    timed_out: bool = False

    def text(self) -> str:
        """Output as the model sees it: printed text, then the value, then the error."""
        parts = [self.stdout.rstrip("\n")] if self.stdout.strip() else []
        if self.result is not None:
            parts.append(self.result)
        if self.error is not None:
            parts.append(self.error)
        if self.truncated:
            parts.append("[output truncated]")
        return "\n".join(parts) if parts else "(no output)"


@functools.lru_cache(maxsize=1)
def network_isolation() -> tuple[str, ...]:
    """The command prefix that gives a child its own, empty network namespace; () if none works."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    for prefix in ((exe, "-n"), (exe, "-rn")):
        try:
            ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return prefix
    return ()


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class Sandbox:
    """A long-lived sandboxed interpreter: `run(code)` executes a cell; state persists between cells.

    A cell that times out or kills the child ends the session; the next `run` starts a fresh one
    (in a new working directory). Use as a context manager, or call `close()`.
    """

    def __init__(self, limits: SandboxLimits = SandboxLimits()):
        self.limits = limits
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self._buf = b""
        self._lock = threading.Lock()  # one cell at a time (the tool server calls tools from threads)

    # ------------------------------------------------------------------ lifecycle
    def _start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="puyu-sandbox-"))
        lim = self.limits
        child_limits = {
            "memory_bytes": lim.memory_mb << 20, "cpu_seconds": lim.cpu_seconds, "file_bytes": lim.file_mb << 20,
            "output_chars": lim.output_chars, "nproc": lim.nproc,
        }
        env = {
            "PATH": "/usr/bin:/bin", "HOME": str(self.workdir), "TMPDIR": str(self.workdir), "LANG": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        }
        prefix = network_isolation() if lim.isolate_network else ()
        cmd = [*prefix, sys.executable, "-I", "-B", str(CHILD), json.dumps(child_limits)]
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self._buf = b""
        ready = self._read_reply(time.monotonic() + 30.0)
        if not isinstance(ready, dict) or not ready.get("ready"):
            err = ready if isinstance(ready, str) else "no handshake"
            self.close()
            raise RuntimeError(f"the sandbox failed to start: {err}")

    def close(self) -> None:
        """Kills the child's process group and removes the working directory."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    f.close()
            self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "proc", None) is not None:
            self.close()

    # ------------------------------------------------------------------ cells
    def _read_reply(self, deadline: float) -> dict | str:
        """The next JSON line from the child, or a string saying why there is none."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                code = self.proc.wait()
                if code < 0:
                    sig = _signal_name(code)
                    why = {"SIGXCPU": " (CPU time limit)", "SIGKILL": " (killed: CPU or memory limit)"}.get(sig, "")
                    return f"the sandbox process died with {sig}{why}"
                return f"the sandbox process exited with code {code}"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, code: str) -> CellResult:
        """Runs one cell under the limits; never raises for anything the code does."""
        with self._lock:
            return self._run(code)

    def _run(self, code: str) -> CellResult:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"code": code}) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            return CellResult(error="the sandbox process died before running the cell")
        reply = self._read_reply(time.monotonic() + self.limits.timeout_s)
        if reply == "timeout":
            self.close()
            return CellResult(error=f"TimeoutError: the cell ran longer than {self.limits.timeout_s:g} s and was "
                                    "killed (session state was lost)", timed_out=True)
        if isinstance(reply, str):
            self.close()
            return CellResult(error=reply + " (session state was lost)")
        return CellResult(reply["stdout"], reply["result"], reply["error"], reply["truncated"])


def run_code(code: str, limits: SandboxLimits = SandboxLimits()) -> CellResult:
    """Runs `code` once in a fresh sandbox (a new process and working directory) and cleans up."""
    with Sandbox(limits) as box:
        return box.run(code)
