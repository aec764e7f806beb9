"""The tool server and RemoteTool over real HTTP: schemas, calls, API key, files by upload and URL."""

import base64

import httpx
import pytest
from agent_helpers import serving
from PIL import Image as PILImage

from puyu_jax.agent import Audio, Image, RemoteTool, ReplayLLM, create_app, load_tools, run
from puyu_jax.agent.tools import SandboxLimits


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("server-out")
    tools = load_tools("python,calculator,tts,image", out_dir=out, limits=SandboxLimits(timeout_s=5))
    with serving(create_app(tools, api_key="s3cret")) as url:
        yield url


def _png(path, size=(64, 32)):
    PILImage.new("RGB", size, "blue").save(path)
    return str(path)


def test_schemas_and_api_key(server):
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    assert httpx.get(f"{server}/tools").status_code == 401
    assert httpx.get(f"{server}/tools", headers={"Authorization": "Bearer wrong"}).status_code == 401
    listed = httpx.get(f"{server}/tools", headers={"X-API-Key": "s3cret"}).json()
    assert [t["name"] for t in listed][:3] == ["python", "calculator", "text_to_speech"]
    local = {t.spec.name: t.spec.to_dict() for t in load_tools("python,calculator,tts,image")}
    assert {t["name"]: t for t in listed} == local
    with pytest.raises(httpx.HTTPStatusError):
        RemoteTool.from_server(server)  # no key


def test_remote_tools_work_like_local_ones(server, tmp_path):
    tools = {t.name: t for t in RemoteTool.from_server(server, api_key="s3cret", download_dir=tmp_path)}
    assert tools["calculator"]({"expression": "2^10 / 4"}).text() == "256"
    assert "division by zero" in tools["calculator"]("1/0").error
    assert "needs the argument 'expression'" in tools["calculator"]({}).error  # checked before the request
    assert tools["python"]({"code": "sum(range(101))"}).text() == "5050"
    (wav,) = tools["text_to_speech"]({"text": "hello"}).outputs
    assert isinstance(wav, Audio) and wav.path.startswith(str(tmp_path)) and open(wav.path, "rb").read(4) == b"RIFF"


def test_images_by_upload_data_uri_and_url(server, tmp_path):
    resize = RemoteTool.from_url(f"{server}/tools/image_resize", api_key="s3cret", download_dir=tmp_path)
    (small,) = resize({"image": _png(tmp_path / "in.png"), "width": 16}).outputs  # uploaded (multipart)
    assert isinstance(small, Image) and PILImage.open(small.path).size == (16, 8)
    data = "data:image/png;base64," + base64.b64encode(open(_png(tmp_path / "d.png", (10, 10)), "rb").read()).decode()
    (again,) = resize({"image": data, "width": 5}).outputs
    assert PILImage.open(again.path).size == (5, 5)
    # a URL: the server fetches it (here one of its own outputs, by its public URL)
    headers = {"X-API-Key": "s3cret"}
    up = httpx.post(f"{server}/tools/image_resize", headers=headers, data={"width": "32"},
                    files={"image": ("x.png", open(tmp_path / "in.png", "rb"), "image/png")}).json()
    assert up["error"] is None and up["outputs"][0]["type"] == "image"
    info = httpx.post(f"{server}/tools/image_info", headers=headers, json={"image": server + up["outputs"][0]["url"]})
    assert "size: 32x16" in info.json()["text"]
    bad = httpx.post(f"{server}/tools/image_info", headers=headers, json={"image": "/etc/passwd"}).json()
    assert bad["error"] == "argument error: image arguments must be uploaded or given as an http(s) or data: URL, got '/etc/passwd'"
    assert httpx.get(f"{server}/files/nope/x.png", headers=headers).status_code == 404


def test_an_agent_with_remote_tools(server):
    tools = RemoteTool.from_server(server, api_key="s3cret")
    llm = ReplayLLM(['Thought: compute\nAction: calculator\nAction Input: {"expression": "37 * 91"}', "Final Answer: 3367"])
    state = run("37 * 91?", llm, tools, "react")
    assert state.answer == "3367" and state.trajectory[2].text == "3367"


def test_unreachable_server_is_an_observation():
    tool = RemoteTool("http://127.0.0.1:9/tools/calculator", load_tools("calculator")[0].spec, timeout=2)
    r = tool({"expression": "1+1"})
    assert not r.ok and "ConnectError" in r.error
