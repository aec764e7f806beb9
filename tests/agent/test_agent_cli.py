"""`puyu agent` and `puyu tools` (through puyu_jax.agent.cli.add_parser)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from agent_helpers import QUESTION, SOLUTION_CODE
from http_server import _free_port

from puyu_jax.agent import RemoteTool
from puyu_jax.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_agent_command_against_an_openai_compatible_server(openai_replay, tmp_path, capsys):
    url, requests = openai_replay([
        {"content": None, "tool_calls": [{"id": "c1", "type": "function",
                                          "function": {"name": "python", "arguments": json.dumps({"code": SOLUTION_CODE})}}]},
        {"content": "17411"},
    ])
    rc = main(["agent", QUESTION, "sandbox.timeout_s=20", "--tools", "python,calculator", "--llm", url,
               "--protocol", "openai", "--max-turns", "3", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "action: python" in out and "{'result': 17411}" in out and "final answer: 17411" in out
    saved = json.loads((tmp_path / "trajectory.json").read_text())
    assert saved["answer"] == "17411" and [e["kind"] for e in saved["events"]] == ["action", "observation", "final"]
    assert (tmp_path / "config.yaml").exists() and requests[0]["model"] == "replay-model"


def test_agent_command_rejects_a_bad_config(capsys):
    assert main(["agent", "q", "--tools", "python,abacus"]) == 2
    assert "abacus" in capsys.readouterr().err


def test_tools_list_json(capsys):
    assert main(["tools", "list", "--tools", "calculator,ocr", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in listed] == ["calculator", "ocr"]
    assert listed[1]["parameters"]["properties"]["image"]["format"] == "image"


def test_tools_serve_subprocess():
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "puyu_jax.cli", "tools", "serve", "--tools", "calculator",
                             "--port", str(port), "--api-key", "k"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.2)
        (calc,) = RemoteTool.from_server(f"http://127.0.0.1:{port}", api_key="k")
        assert calc({"expression": "3^4"}).text() == "81"
    finally:
        proc.terminate()
        proc.wait(10)


def test_tools_commands_reject_unknown_tools(capsys):
    assert main(["tools", "list", "--tools", "abacus"]) == 2
    assert main(["tools", "list", "--tools", "search"]) == 2
    assert "unknown tool 'abacus'" in capsys.readouterr().err
