"""The Python sandbox: limits hold, the host survives, sessions keep state, the host cannot be read."""

import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from agent_helpers import SOLUTION_CODE

from puyu_jax.agent.tools import PythonInterpreter, Sandbox, SandboxLimits, SandboxUnavailable, load_tools, run_code
from puyu_jax.agent.tools import sandbox as sandbox_mod
from puyu_jax.agent.tools.sandbox import network_isolation

FAST = SandboxLimits(timeout_s=2.0, memory_mb=512)
UNSAFE = SandboxLimits(timeout_s=2.0, memory_mb=512, unsafe=True)


def test_solution_and_cells():
    assert run_code("def solution():\n    return {'result': 6 * 7}").text() == "{'result': 42}"
    r = run_code("print('hi')\nx = 2\nx ** 10")
    assert (r.stdout, r.result, r.error) == ("hi\n", "1024", None)
    r = run_code("1 / 0")
    assert "ZeroDivisionError" in r.error and "_sandbox_child" not in r.error


def test_infinite_loop_times_out_and_host_survives():
    r = run_code("while True:\n    pass", FAST)
    assert r.timed_out and "TimeoutError" in r.error
    assert run_code("1 + 1", FAST).result == "2"


def test_cpu_limit_kills_a_spinning_child():
    r = run_code("while True:\n    pass", SandboxLimits(timeout_s=20, cpu_seconds=1))
    assert not r.timed_out and "SIGXCPU" in r.error


def test_ten_gigabyte_allocation_fails():
    r = run_code("x = bytearray(10 * 1024 ** 3)\nlen(x)", FAST)
    assert r.error is not None and "MemoryError" in r.error


def test_network_access_fails():
    # a server the host can reach: the sandbox must not
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    threading.Thread(target=lambda: srv.accept(), daemon=True).start()
    try:
        for code in (f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
                     "import urllib.request; urllib.request.urlopen('http://example.com', timeout=2)"):
            r = run_code(code, FAST)
            assert r.error is not None and "PermissionError: sandbox:" in r.error, r.error
    finally:
        srv.close()


def test_the_network_namespace_alone_blocks_the_network():
    """The OS layer without the audit hook: a plain child under the namespace prefix cannot connect."""
    prefix = network_isolation()
    assert prefix, "unshare -n (or -rn) should work on this machine"
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    try:
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        proc = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0 and ("ConnectionRefused" in proc.stderr or "unreachable" in proc.stderr)
        assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode == 0
    finally:
        srv.close()


@pytest.mark.parametrize("limits", [FAST, UNSAFE], ids=["namespaced", "unsafe"])
def test_writing_outside_the_working_directory_fails(tmp_path, limits):
    target = tmp_path / "escape.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')", f"import os; os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)",
                 f"import pathlib; pathlib.Path({str(target)!r}).write_text('x')",
                 f"import os; os.rename('a', {str(target)!r})", f"import shutil; shutil.rmtree({str(tmp_path)!r})",
                 "import os; os.chdir('/tmp')"):
        r = run_code("open('a', 'w').close()\n" + code, limits)
        assert r.error is not None and "PermissionError: sandbox" in r.error, (code, r.error)
    assert not target.exists() and tmp_path.exists()
    r = run_code("open('inside.txt', 'w').write('ok')\nimport os\nsorted(os.listdir('.'))", limits)
    assert r.result == "['inside.txt']"


def test_processes_and_signals_are_refused():
    for code in ("import subprocess; subprocess.run(['true'])", "import os; os.system('true')",
                 "import os; os.kill(os.getppid(), 9)", "import os; os.fork()",
                 "import resource; resource.setrlimit(resource.RLIMIT_AS, (-1, -1))"):
        r = run_code(code, FAST)
        assert r.error is not None and "PermissionError: sandbox" in r.error, (code, r.error)
    assert os.getpid() > 0  # we are still here


def test_output_is_capped():
    r = run_code("print('x' * 100_000)", SandboxLimits(output_chars=1000))
    assert r.truncated and len(r.stdout) == 1000 and r.text().endswith("[output truncated]")


def test_stateful_session_keeps_state_and_recovers_from_a_time_out():
    with Sandbox(FAST) as box:
        assert box.run("import math\nx = 41\n_ = open('kept.txt', 'w').write('x')").result is None
        assert box.run("x + 1").result == "42"
        assert box.run("open('kept.txt').read()").result == "'x'"
        ns_pid = box._ns_pid
        assert box.run("while True: pass").timed_out
        r = box.run("x")
        assert "NameError" in r.error  # a fresh interpreter after the time-out
        assert "FileNotFoundError" in box.run("open('kept.txt')").error  # and a fresh working directory
        assert _gone(ns_pid)  # the timed-out sandbox's processes are gone
        ns_pid = box._ns_pid
    assert _gone(ns_pid)


def _gone(pid: int, within_s: float = 15.0) -> bool:
    """The process has left /proc: killed, and reaped by its parent (or, once an orphan, by init),
    which happens asynchronously after the kill on a busy machine."""
    deadline = time.monotonic() + within_s
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_unsafe_sandbox_keeps_its_host_directory_until_closed():
    with Sandbox(UNSAFE) as box:
        assert box.run("open('f', 'w').write('x')").error is None
        workdir = box.workdir
        assert (workdir / "f").read_text() == "x"
    assert not workdir.exists()


def test_python_tool_stateless_and_stateful():
    py = PythonInterpreter(FAST)
    assert py({"code": "```python\ny = 3\ny * 3\n```"}).text() == "9"
    assert "NameError" in py({"code": "y"}).text()
    session = PythonInterpreter(FAST, stateful=True)
    try:
        session("y = 3")
        assert session("y * 3").text() == "9"
    finally:
        session.close()


@pytest.mark.parametrize("code", ["import os; os.remove('/etc/hostname')", "open('/etc/hostname', 'a')"])
def test_system_files_are_left_alone(code):
    before = open("/etc/hostname").read()
    assert "PermissionError" in run_code(code, FAST).error
    assert open("/etc/hostname").read() == before


# ---------------------------------------------------------------------------------------------------------------
# The namespaces: what sandboxed code tries against the host, all of which must fail. Each of these reads worked
# in the unsafe child (the host's file system, /proc and user).

SECRET = "puyu-test-secret-4c1d9e"


def test_the_namespaced_sandbox_is_available_here():
    sandbox_mod.check_sandbox(FAST)  # bubblewrap is a system dependency (make system-deps)
    r = run_code("import os\nprint(os.getuid(), os.getgid(), os.getcwd(), os.environ['HOME'])", FAST)
    assert r.stdout.split() == ["65534", "65534", "/sandbox", "/sandbox"]


def test_the_sandbox_runs_as_an_unprivileged_host_user():
    """Seen from the host, the sandboxed interpreter is not root (uid 65534 when the host is root)."""
    with Sandbox(FAST) as box:
        assert box.run("1").result == "1"
        pids = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and (p / "status").exists() and f"PPid:\t{box._ns_pid}\n" in (p / "status").read_text()]
        assert pids, "the sandboxed interpreter should be a child of the sandbox's pid 1"
        uids = {line.split()[1] for p in pids for line in (p / "status").read_text().splitlines()
                if line.startswith("Uid:")}
        expected = "65534" if os.geteuid() == 0 else str(os.geteuid())
        assert uids == {expected}


def _run_in_a_host_holding_a_secret(code: str) -> str:
    """Runs `code` in a sandbox started by a fresh host process whose environment holds SECRET (as an API key would
    be). `{host}` in `code` becomes that host's pid. The host loads only the sandbox module (no jax: fast)."""
    script = (
        "import importlib.util, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('sb', {sandbox_mod.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['sb'] = m; spec.loader.exec_module(m)\n"
        f"limits = m.SandboxLimits(timeout_s=10, memory_mb=512, unsafe=bool(int(sys.argv[1])))\n"
        f"print(m.run_code({code!r}.replace('{{host}}', str(os.getpid())), limits).text())\n"
    )
    env = {**os.environ, "PUYU_API_KEY": SECRET}
    out = {}
    for unsafe in (0, 1):
        proc = subprocess.run([sys.executable, "-c", script, str(unsafe)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        out[unsafe] = proc.stdout
    return out[0], out[1]


def test_the_parents_environment_cannot_be_read():
    code = """import os, glob
found, readable = [], 0
pids = {os.getppid(), {host}} | {int(p.split('/')[2]) for p in glob.glob('/proc/[0-9]*')}
for pid in sorted(pids):
    try:
        env = open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace')
        readable += 1
    except OSError:
        continue
    found += [kv for kv in env.split('\\0') if 'API_KEY' in kv]
found += [kv for kv in os.environ if 'API_KEY' in kv]
print(readable, found)
"""
    safe, unsafe = _run_in_a_host_holding_a_secret(code)
    assert SECRET in unsafe  # the attack works without the namespaces (the test can fail) ...
    assert SECRET not in safe  # ... and not with them


def test_other_processes_are_invisible():
    host = os.getpid()
    r = run_code(f"""import os
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
try:
    open('/proc/{host}/cmdline').read(); seen = True
except OSError:
    seen = False
print(pids, seen)""", FAST)
    pids, seen = r.stdout.rsplit(" ", 1)
    assert eval(pids) == [1, 2] and seen.strip() == "False", r.text()  # bubblewrap's init and the interpreter


def test_host_files_cannot_be_read(tmp_path):
    """/etc/shadow, the host user's home, the host's /tmp and this repository are not in the sandbox."""
    home_file = tempfile.NamedTemporaryFile("w", dir=Path.home(), prefix=".puyu-sandbox-test-", delete=False)
    home_file.write(SECRET)
    home_file.close()
    (tmp_path / "secret.txt").write_text(SECRET)
    targets = ["/etc/shadow", "/etc/passwd", home_file.name, str(tmp_path / "secret.txt"), __file__,
               str(Path(sandbox_mod.__file__).parents[3] / "pyproject.toml")]
    code = f"""import os
for t in {targets!r}:
    try:
        print(t, 'READ', open(t).read()[:200])
    except OSError as e:
        print(t, type(e).__name__)
print(sorted(os.listdir(os.path.expanduser('~'))), sorted(os.listdir('/')))"""
    try:
        r = run_code(code, FAST)
        unsafe = run_code(code, UNSAFE)
    finally:
        os.unlink(home_file.name)
    assert "READ" not in r.stdout and SECRET not in r.stdout, r.stdout
    assert r.stdout.count("FileNotFoundError") == len(targets), r.stdout
    assert "'etc'" in r.stdout and "'home'" not in r.stdout and "'tmp'" not in r.stdout
    assert SECRET in unsafe.stdout  # readable without the namespaces: the test can fail
    if os.geteuid() == 0:
        assert "/etc/shadow READ" in unsafe.stdout


def test_writing_outside_the_working_directory_fails_also_through_ctypes(tmp_path):
    """ctypes calls libc directly (no audit hook): the read-only mounts are what stops it."""
    targets = [str(tmp_path / "escape.txt"), "/usr/escape.txt", "/etc/escape.txt", "/escape.txt", "/dev/escape.txt",
               "/dev/shm/escape.txt", "/proc/escape.txt", "/sandbox/../escape.txt", "/opt/puyu/sandbox_child.py",
               str(Path(sys.executable).resolve()), str(Path(pytest.__file__).resolve())]
    before = Path(sys.executable).resolve().read_bytes()[:64]
    code = f"""import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
print(libc.write(libc.open(b'/dev/null', os.O_WRONLY), b'x', 1))  # devices still work
for t in {targets!r} + ['inside.txt']:
    fd = libc.open(t.encode(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if fd >= 0:
        print(t, 'WROTE', libc.write(fd, b'x', 1))
    else:
        print(t, os.strerror(ctypes.get_errno()))"""
    r = run_code(code, FAST)
    lines = r.stdout.splitlines()
    assert lines[0] == "1" and lines[-1] == "inside.txt WROTE 1", r.text()  # ctypes works, inside
    assert not any("WROTE" in line for line in lines[1:-1]) and len(lines) == len(targets) + 2, r.stdout
    assert not (tmp_path / "escape.txt").exists() and Path(sys.executable).resolve().read_bytes()[:64] == before
    assert "WROTE" in run_code(code.replace(repr(targets), repr(targets[:1])), UNSAFE).stdout  # the attack is real
    (tmp_path / "escape.txt").unlink()


def test_network_is_unreachable_even_through_ctypes():
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    threading.Thread(target=lambda: srv.accept(), daemon=True).start()
    try:
        code = f"""import ctypes, os, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
addr = struct.pack('<HH4s8x', socket.AF_INET, socket.htons({port}), socket.inet_aton('127.0.0.1'))
rc = libc.connect(fd, addr, len(addr))
print(fd >= 0, rc, os.strerror(ctypes.get_errno()))"""
        r = run_code(code, FAST)
        assert r.stdout.startswith("True -1"), r.text()
    finally:
        srv.close()


def test_the_origin_documents_example_still_works():
    assert run_code(SOLUTION_CODE, FAST.__class__(timeout_s=60)).text() == "{'result': 17411}"


def test_disk_quota_per_call_and_per_file():
    limits = SandboxLimits(timeout_s=20, disk_mb=8, file_mb=6)
    fill = "open('f{i}', 'wb').write(b'x' * (4 << 20))\n"
    r = run_code(fill.format(i=1) + fill.format(i=2) + fill.format(i=3), limits)
    assert r.error is not None and "No space left on device" in r.error, r.text()
    # the next call starts with an empty working directory: its full quota again
    assert run_code(fill.format(i=1) + "import os\nos.path.getsize('f1')", limits).result == str(4 << 20)
    r = run_code("open('big', 'wb').write(b'x' * (7 << 20))", limits)
    assert r.error is not None and "File too large" in r.error, r.text()


def test_disk_quota_per_session():
    limits = SandboxLimits(timeout_s=20, disk_mb=8)
    fill = "open('{name}', 'wb').write(b'x' * (5 << 20))"
    with Sandbox(limits) as box:
        assert box.run(fill.format(name="a")).error is None
        r = box.run(fill.format(name="b"))  # 10 MB in the session, over 8
        assert r.error is not None and "No space left on device" in r.error, r.text()
        assert box.run("import os\nos.remove('b'); os.remove('a')").error is None
        assert box.run(fill.format(name="c")).error is None  # space comes back when files go


def test_refuses_to_start_without_namespaces_unless_unsafe(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap, no unshare
    sandbox_mod._namespaces_problem.cache_clear()
    sandbox_mod._warn_unsafe.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable) as e:
            load_tools("python")
        assert "\n" not in str(e.value) and "bubblewrap" in str(e.value) and "--unsafe-sandbox" in str(e.value)
        with pytest.raises(SandboxUnavailable):
            run_code("1", FAST)
        with caplog.at_level(logging.WARNING):
            assert run_code("1 + 1", UNSAFE).result == "2"
        assert "UNSAFE SANDBOX" in caplog.text
    finally:
        sandbox_mod._namespaces_problem.cache_clear()


def test_cli_refuses_then_runs_with_unsafe_sandbox(openai_replay, tmp_path, monkeypatch, capsys):
    import json

    from puyu_jax.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))
    sandbox_mod._namespaces_problem.cache_clear()
    try:
        assert main(["agent", "q", "--tools", "python", "--llm", "http://127.0.0.1:9/v1"]) == 2
        err = capsys.readouterr().err
        assert "puyu: error:" in err and "bubblewrap" in err and "--unsafe-sandbox" in err
        url, _ = openai_replay([
            {"content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "python", "arguments": json.dumps({"code": "print(6 * 7)"})}}]},
            {"content": "42"}])
        rc = main(["agent", "q", "--tools", "python", "--llm", url, "--protocol", "openai", "--unsafe-sandbox"])
        captured = capsys.readouterr()
        assert rc == 0 and "final answer: 42" in captured.out and "WARNING: --unsafe-sandbox" in captured.err
    finally:
        sandbox_mod._namespaces_problem.cache_clear()
