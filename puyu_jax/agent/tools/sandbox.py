"""A sandbox for model-written Python: a fresh interpreter in its own Linux namespaces.

Each `Sandbox` is one `python -I -S -B` child (see `_sandbox_child.py`) started by bubblewrap
(`bwrap`, Debian package `bubblewrap`) in new user, mount, PID, network, IPC and UTS namespaces:

  * the file system is an empty root with read-only binds of only what Python needs: /usr (the
    C libraries), the interpreter's prefix (stdlib) and the parent's site-packages; no /etc
    (but ld.so.cache), no /home, /root, /tmp or /work; a private /proc showing only the
    sandbox's own processes, a minimal /dev;
  * the working directory (also HOME and TMPDIR) is a fresh tmpfs of `disk_mb` (the session's
    disk quota); it vanishes with the sandbox;
  * the child runs as uid/gid 65534 with no capabilities and no_new_privs. When the host runs
    as root, the user namespace maps 65534 to the host's 65534 (`nobody`), so the child is
    unprivileged on the host too, not only inside;
  * no network (only a downed loopback), unless `isolate_network=False`;
  * the environment is built from scratch: nothing of the parent's (API keys) reaches the child.

Inside, the child sets rlimits (CPU time, address space, file size, process count, no core
dumps) and an audit hook refusing sockets, processes, signals and writes outside the working
directory (a second line: ctypes can get round it, the namespaces cannot be). The host
enforces the wall-clock time-out per cell (killing the whole sandbox) and the output cap.

Where bubblewrap or user namespaces are missing, `Sandbox` refuses to start with
`SandboxUnavailable`, unless `SandboxLimits(unsafe=True)` (`puyu agent --unsafe-sandbox`)
asks for the old, weaker child: same rlimits and audit hook, but the host's file system,
/proc and user (it can read what the host user can read), with a loud warning.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import select
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SandboxLimits", "CellResult", "Sandbox", "SandboxUnavailable", "check_sandbox", "run_code",
           "network_isolation"]

logger = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("_sandbox_child.py")
SANDBOX_UID = 65534  # nobody / nogroup on Debian
HOME = "/sandbox"  # the working directory inside the sandbox
CHILD_IN = "/opt/puyu/sandbox_child.py"  # where the child script is bound inside


@dataclass(frozen=True)
class SandboxLimits:
    """Per-cell limits (cpu_seconds is per session: RLIMIT_CPU counts the process's whole life)."""

    timeout_s: float = 10.0  # wall clock per cell
    cpu_seconds: int = 60
    memory_mb: int = 1024
    file_mb: int = 64
    output_chars: int = 8000
    disk_mb: int = 128  # the working directory's size: all files of one session (one call when stateless)
    nproc: int = 64
    isolate_network: bool = True
    unsafe: bool = False  # no namespaces: the child sees the host's files as the host user (--unsafe-sandbox)

    def __post_init__(self):
        for name in ("timeout_s", "cpu_seconds", "memory_mb", "file_mb", "output_chars", "disk_mb", "nproc"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sandbox.{name}={getattr(self, name)!r} must be > 0")


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
    """The command prefix that gives a child its own, empty network namespace; () if none works.

    Used by the unsafe child only (the namespaced sandbox gets its network namespace from bubblewrap).
    """
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


class SandboxUnavailable(RuntimeError):
    """The namespaced sandbox cannot run here (no bubblewrap, or user namespaces are disabled)."""


@functools.lru_cache(maxsize=1)
def _python_layout() -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(interpreter, directories to bind read-only, site-packages directories for the child's sys.path)."""
    interpreter = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    sites = []
    for d in [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]:
        d = os.path.realpath(d)
        if os.path.isdir(d) and d not in sites:
            sites.append(d)
    binds: list[str] = []
    for d in sorted({os.path.realpath(sys.base_prefix), os.path.dirname(interpreter), *sites}, key=len):
        if not any(d == b or d.startswith(b + os.sep) for b in ("/usr", *binds)):
            binds.append(d)
    return interpreter, tuple(binds), tuple(sites)


def _bwrap_args(limits: SandboxLimits, userns_fd: int | None) -> list[str]:
    """bubblewrap's options: namespaces, the read-only file system, the tmpfs working directory."""
    args = ["--userns", str(userns_fd)] if userns_fd is not None else ["--unshare-user", "--disable-userns"]
    args += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if limits.isolate_network:
        args.append("--unshare-net")
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind", "/usr", "/usr", "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for d in _python_layout()[1]:
        args += ["--ro-bind", d, d]
    args += ["--ro-bind", str(CHILD), CHILD_IN, "--proc", "/proc", "--dev", "/dev",
             "--perms", "0700", "--size", str(limits.disk_mb << 20), "--tmpfs", HOME,
             # the root and /dev are tmpfs too: read-only, or they would be unquota'd writable space
             "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", HOME]
    return args


def _root_userns() -> int:
    """An fd of a new user namespace mapping the sandbox uid/gid to the host's own 65534 (for a root host).

    bubblewrap run by root with --unshare-user would map the sandbox uid to host root; this maps it to the
    unprivileged host uid instead. Host root is mapped to uid 1 inside (not 0) so bubblewrap keeps the
    capabilities it needs to bind the (root-owned) Python files while it sets up, before dropping them all.
    """
    exe = shutil.which("unshare")
    if exe is None:
        raise SandboxUnavailable("`unshare` (util-linux) is not installed")
    holder = subprocess.Popen([exe, "--user", "--", "cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        mine = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/user") == mine:
            if holder.poll() is not None or time.monotonic() > deadline:
                err = holder.stderr.read().decode(errors="replace").strip() if holder.stderr else ""
                raise SandboxUnavailable(f"cannot create a user namespace: {err or 'unshare --user did not start'}")
            time.sleep(0.002)
        mapping = f"1 0 1\n{SANDBOX_UID} {SANDBOX_UID} 1\n"
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{holder.pid}/{name}", "w") as f:
                f.write(mapping)
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SandboxUnavailable(f"cannot set up a user namespace: {e}") from None
    finally:
        holder.kill()
        holder.wait()
        if holder.stdin is not None:
            holder.stdin.close()
        if holder.stderr is not None:
            holder.stderr.close()


def _sandbox_command(limits: SandboxLimits, argv: list[str], info_fd: int) -> tuple[list[str], int | None]:
    """The command running `argv` (interpreter first) in the sandbox, and the userns fd to pass to it (or None)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap)")
    fd = _root_userns() if os.geteuid() == 0 else None
    return [bwrap, *_bwrap_args(limits, fd), "--info-fd", str(info_fd), "--", *argv], fd


def _popen_in_sandbox(limits: SandboxLimits, argv: list[str], env: dict, pass_fds: tuple[int, ...] = (),
                      **kwargs) -> tuple[subprocess.Popen, int | None]:
    """Starts `argv` in the sandbox: (the bubblewrap process, the host pid of the sandbox's pid 1 or None).

    Killing that pid 1 ends every process of the sandbox (its PID namespace dies with it). Killing bubblewrap
    alone is not enough when it changes uid (the kernel then drops its child's parent-death signal).
    """
    info_r, info_w = os.pipe()
    fd = None
    try:
        cmd, fd = _sandbox_command(limits, argv, info_w)
        proc = subprocess.Popen(cmd, env=env, cwd="/", start_new_session=True,
                                pass_fds=(info_w, *pass_fds, *(() if fd is None else (fd,))), **kwargs)
    except BaseException:
        os.close(info_r)
        raise
    finally:
        os.close(info_w)
        if fd is not None:
            os.close(fd)
    info, deadline = b"", time.monotonic() + 30
    with os.fdopen(info_r, "rb", buffering=0) as f:  # bubblewrap closes it once the sandbox exists (or on failure)
        while time.monotonic() < deadline and select.select([f], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = f.read(4096)
            if not chunk:
                break
            info += chunk
    try:
        return proc, int(json.loads(info)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return proc, None


@functools.lru_cache(maxsize=1)
def _namespaces_problem() -> str | None:
    """None when a sandboxed interpreter starts here; else why not (one line)."""
    try:
        proc, _ = _popen_in_sandbox(SandboxLimits(), [_python_layout()[0], "-I", "-S", "-c", "pass"],
                                    env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=60)
    except SandboxUnavailable as e:
        return str(e)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap did not run: {e}"
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        return f"bubblewrap failed ({lines[-1] if lines else f'exit code {proc.returncode}'})"
    return None


def check_sandbox(limits: SandboxLimits = SandboxLimits()) -> None:
    """Raises `SandboxUnavailable` (one line) unless the namespaced sandbox works here or `limits.unsafe`.

    With `limits.unsafe`, logs a loud warning once instead.
    """
    if limits.unsafe:
        _warn_unsafe()
        return
    problem = _namespaces_problem()
    if problem is not None:
        raise SandboxUnavailable(f"the Python sandbox needs Linux user namespaces through bubblewrap: {problem}; "
                                 "pass --unsafe-sandbox (sandbox.unsafe=true) to run code without them")


@functools.lru_cache(maxsize=1)
def _warn_unsafe() -> None:
    logger.warning("UNSAFE SANDBOX: model-written code runs without namespaces and can read every file, process "
                   "environment and /proc entry the host user can (--unsafe-sandbox)")


def _child_env(home: str = HOME) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


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
        self.workdir: Path | None = None  # on the host: only for an unsafe sandbox
        self._ns_pid: int | None = None  # the host pid of the sandbox's pid 1
        self._lifeline: int | None = None
        self._buf = b""
        self._lock = threading.Lock()  # one cell at a time (the tool server calls tools from threads)

    # ------------------------------------------------------------------ lifecycle
    def _start(self) -> None:
        lim = self.limits
        check_sandbox(lim)
        interpreter, _, sites = _python_layout()
        # the child exits when this end closes: the host's death (or close()) ends the sandbox even mid-cell
        lifeline_r, self._lifeline = os.pipe()
        child_limits = {
            "memory_bytes": lim.memory_mb << 20, "cpu_seconds": lim.cpu_seconds, "file_bytes": lim.file_mb << 20,
            "output_chars": lim.output_chars, "nproc": lim.nproc, "site_dirs": list(sites), "lifeline_fd": lifeline_r,
        }
        pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, pass_fds=(lifeline_r,))
        try:
            if lim.unsafe:
                self.workdir = Path(tempfile.mkdtemp(prefix="puyu-sandbox-"))
                prefix = network_isolation() if lim.isolate_network else ()
                cmd = [*prefix, interpreter, "-I", "-S", "-B", str(CHILD), json.dumps(child_limits)]
                self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=_child_env(str(self.workdir)),
                                             start_new_session=True, **pipes)
            else:
                self.workdir = None  # a tmpfs inside the sandbox, gone with it
                argv = [interpreter, "-I", "-S", "-B", CHILD_IN, json.dumps(child_limits)]
                self.proc, self._ns_pid = _popen_in_sandbox(lim, argv, _child_env(), **pipes)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(lifeline_r)
        self._buf = b""
        ready = self._read_reply(time.monotonic() + 30.0)
        if not isinstance(ready, dict) or not ready.get("ready"):
            err = ready if isinstance(ready, str) else "no handshake"
            self.close()
            raise RuntimeError(f"the sandbox failed to start: {err}")

    def close(self) -> None:
        """Kills every process of the sandbox and removes its working directory."""
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self.proc is not None:
            if self._ns_pid is not None and self.proc.poll() is None:  # while bwrap lives, the pid is not reused
                try:
                    os.kill(self._ns_pid, signal.SIGKILL)
                    self.proc.wait(timeout=5)  # bwrap reaps the sandbox's pid 1, then exits
                except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    f.close()
            self.proc = None
        self._ns_pid = None
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
                if code > 128 and not self.limits.unsafe:  # bubblewrap reports its child's death by signal N as 128 + N
                    code = 128 - code
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
