"""The sandboxed child: a REPL loop speaking JSON lines, run as `python -I -S -B _sandbox_child.py LIMITS`.

Standalone on purpose (only the standard library, no puyu_jax import): it is started in a
fresh interpreter whose working directory is the sandbox's temporary directory. `-S` skips the
`site` module; the child adds the site-packages directories the host names in LIMITS (those of
the host's environment, bound read-only into the sandbox) and the `exit`/`help` builtins itself.

Protocol: one request per stdin line, `{"code": "..."}`; one reply per line on the original
stdout, `{"stdout": str, "result": str | null, "error": str | null, "truncated": bool}`.
`result` is the repr of `solution()` when the cell defines `solution`, else of the cell's
last expression (as a notebook shows it). User code's stdout/stderr go to a capped buffer;
the process's own fds 1 and 2 point at /dev/null so raw writes cannot corrupt the replies.

Limits set here before any user code runs (OS-enforced): RLIMIT_AS (memory), RLIMIT_CPU,
RLIMIT_FSIZE, RLIMIT_NPROC (not for uid 0, which is exempt from it), RLIMIT_CORE=0.
Then an audit hook (interpreter-enforced, best effort: ctypes or C extensions can get round it)
refuses sockets, process creation, signals to other processes, raising rlimits, and any
write/create/delete/rename/chmod outside the working directory.
"""

import ast
import io
import json
import os
import resource
import site
import sys
import threading
import traceback

LIMITS = json.loads(sys.argv[1])
ROOT = os.path.realpath(os.getcwd())


def _set_path() -> None:
    for d in LIMITS.get("site_dirs", ()):
        site.addsitedir(d)
    site.setquit()
    site.setcopyright()
    site.sethelper()


def _watch_lifeline(fd: int) -> None:
    """Exits the process when the host's end of the lifeline pipe closes (the host died or closed the sandbox)."""
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os._exit(1)


def _set_limits() -> None:
    mem = LIMITS["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu = LIMITS["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    fsize = LIMITS["file_bytes"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.geteuid() != 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (LIMITS["nproc"], LIMITS["nproc"]))


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {  # event -> indexes of path arguments that must stay inside ROOT
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
    "os.chflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,),
    "shutil.copyfile": (1,), "shutil.move": (1,), "os.mkfifo": (0,), "os.mknod": (0,),
}
_BLOCKED = (
    "socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
    "os.forkpty", "pty.", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit",
    "resource.prlimit", "os.chdir", "os.chroot", "webbrowser.", "urllib.Request", "ftplib.",
    "http.client.", "smtplib.", "nntplib.", "poplib.", "imaplib.", "telnetlib.",
)


def _inside(path) -> bool:
    if isinstance(path, int):  # an fd (or dir_fd-relative call): already opened under the rules
        return True
    try:
        p = os.fsdecode(path)
    except TypeError:
        return True
    full = os.path.realpath(os.path.join(ROOT, p))
    return full == ROOT or full.startswith(ROOT + os.sep) or full == os.devnull


def _hook(event: str, args: tuple) -> None:
    if event.startswith(_BLOCKED):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & _WRITE_FLAGS)
        if writing and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the working directory is not allowed")
    elif event in _PATH_EVENTS:
        for i in _PATH_EVENTS[event]:
            if i < len(args) and not _inside(args[i]):
                raise PermissionError(f"sandbox: {event} on {args[i]!r} outside the working directory is not allowed")


class _Capped(io.TextIOBase):
    """A text sink keeping the first `cap` characters."""

    def __init__(self, cap: int):
        self.cap, self.parts, self.size, self.truncated = cap, [], 0, False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        room = self.cap - self.size
        if len(s) > room:
            self.truncated = True
            s = s[:max(room, 0)]
        if s:
            self.parts.append(s)
            self.size += len(s)
        return len(s)

    def getvalue(self) -> str:
        return "".join(self.parts)


def _run_cell(code: str, namespace: dict, cap: int) -> dict:
    out = _Capped(cap)
    sys.stdout = sys.stderr = out
    result = error = None
    try:
        tree = ast.parse(code, "<cell>", "exec")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        defines_solution = any(isinstance(n, ast.FunctionDef) and n.name == "solution" for n in tree.body)
        exec(compile(tree, "<cell>", "exec"), namespace)
        value = None
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
        elif defines_solution and callable(namespace.get("solution")):
            value = namespace["solution"]()
        if value is not None:
            result = repr(value)
    except BaseException as e:  # user code may raise anything, SystemExit and MemoryError included
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        # drop the frames of this file; keep the user's
        tb = [line for line in tb if __file__ not in line]
        error = "".join(tb).strip()
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    text = out.getvalue()
    if result is not None and len(result) > cap:
        result, out.truncated = result[:cap], True
    return {"stdout": text, "result": result, "error": error, "truncated": out.truncated}


def main() -> None:
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    sys.stdin = open(os.devnull)
    if LIMITS.get("lifeline_fd") is not None:
        threading.Thread(target=_watch_lifeline, args=(LIMITS["lifeline_fd"],), daemon=True).start()
    _set_path()
    _set_limits()
    sys.addaudithook(_hook)
    namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    for line in requests:
        code = json.loads(line)["code"]
        reply = _run_cell(code, namespace, LIMITS["output_chars"])
        replies.write(json.dumps(reply, ensure_ascii=False) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
