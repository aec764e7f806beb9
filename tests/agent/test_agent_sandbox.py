"""The Python sandbox: limits hold, the host survives, sessions keep state."""

import os
import socket
import subprocess
import sys
import threading

import pytest

from puyu_jax.agent.tools import PythonInterpreter, Sandbox, SandboxLimits, run_code
from puyu_jax.agent.tools.sandbox import network_isolation

FAST = SandboxLimits(timeout_s=2.0, memory_mb=512)


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


def test_writing_outside_the_working_directory_fails(tmp_path):
    target = tmp_path / "escape.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')", f"import os; os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)",
                 f"import pathlib; pathlib.Path({str(target)!r}).write_text('x')",
                 f"import os; os.rename('a', {str(target)!r})", f"import shutil; shutil.rmtree({str(tmp_path)!r})",
                 "import os; os.chdir('/tmp')"):
        r = run_code("open('a', 'w').close()\n" + code, FAST)
        assert r.error is not None and "PermissionError: sandbox" in r.error, (code, r.error)
    assert not target.exists() and tmp_path.exists()
    r = run_code("open('inside.txt', 'w').write('ok')\nimport os\nsorted(os.listdir('.'))", FAST)
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
        assert box.run("import math\nx = 41").result is None
        assert box.run("x + 1").result == "42"
        workdir = box.workdir
        assert box.run("while True: pass").timed_out
        r = box.run("x")
        assert "NameError" in r.error  # a fresh interpreter after the time-out
        assert box.workdir != workdir
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
