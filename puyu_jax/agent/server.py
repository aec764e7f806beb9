"""The tool server: tools over HTTP with their schemas (FastAPI), for `RemoteTool` and any client.

    GET  /tools               -> [spec, ...]         (ToolSpec.to_dict: name, description, parameters, returns)
    GET  /tools/{name}        -> spec
    POST /tools/{name}        JSON body {arg: value, ...}, or multipart form (a field per argument;
                              image/audio/file arguments as uploads). A file argument given as a
                              string may be an http(s) URL (fetched), a `data:` URI, or a `/files/...`
                              URL this server returned earlier.
                              -> {"outputs": [{"type": "text", "value": ...} |
                                              {"type": "image", "url": "/files/ID/NAME", "name": NAME}],
                                  "text": observation text, "error": null | message}
    GET  /files/{id}/{name}   a file produced (or received) by the server
    GET  /health

With an API key every route except /health needs `Authorization: Bearer KEY` or `X-API-Key: KEY`.

(No `from __future__ import annotations` here: FastAPI reads the route annotations at run time.)
"""


import base64
import binascii
import hmac
import mimetypes
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from puyu_jax.agent.tool import FILE_KINDS, File, Tool, ToolResult

__all__ = ["create_app", "serve", "output_type"]

MAX_FETCH_BYTES = 50 << 20


def output_type(value: Any) -> str:
    """The wire type of one tool output."""
    if isinstance(value, File):
        return value.kind
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "text"


class _Files:
    """Files the server hands out or received: id -> path (only registered paths are ever served)."""

    def __init__(self, root: Path):
        self.root = root
        self.paths: dict[str, Path] = {}

    def register(self, path: Path) -> str:
        fid = uuid.uuid4().hex
        self.paths[fid] = path
        return f"/files/{fid}/{path.name}"

    def new_path(self, suffix: str) -> Path:
        d = self.root / uuid.uuid4().hex
        d.mkdir(parents=True)
        return d / f"input{suffix}"

    def lookup(self, url: str) -> Path | None:
        parts = url.split("/files/", 1)
        if len(parts) != 2:
            return None
        fid = parts[1].split("/", 1)[0]
        return self.paths.get(fid)


def _suffix(name: str | None, content_type: str | None) -> str:
    suffix = Path(name or "").suffix.lower()
    if suffix and suffix.isascii() and len(suffix) <= 8 and suffix[1:].isalnum():
        return suffix
    return mimetypes.guess_extension((content_type or "").split(";")[0].strip()) or ".bin"


def create_app(tools: Sequence[Tool], *, api_key: str | None = None, files_dir: str | Path | None = None,
               allow_url_fetch: bool = True):
    """A FastAPI app serving `tools`.

    Args:
      tools: the tools (names must be unique).
      api_key: required from clients when set.
      files_dir: where uploads and fetched inputs are stored (a temporary folder when None).
      allow_url_fetch: accept http(s) URLs for file arguments (the server downloads them).
    """
    import httpx
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

    by_name = {t.spec.name: t for t in tools}
    if len(by_name) != len(tools):
        raise ValueError("tool names must be unique")
    files = _Files(Path(files_dir) if files_dir is not None else Path(tempfile.mkdtemp(prefix="puyu-toolserver-")))

    def check_key(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key")

    app = FastAPI(title="puyu tool server", dependencies=[])
    app.state.tools = by_name

    def tool_or_404(name: str) -> Tool:
        if name not in by_name:
            raise HTTPException(404, f"no tool {name!r}; tools: {sorted(by_name)}")
        return by_name[name]

    async def file_argument(kind: str, value: Any) -> str:
        """A local path for a file argument given as an upload, a data URI, our /files URL or a URL."""
        if isinstance(value, UploadFile):
            path = files.new_path(_suffix(value.filename, value.content_type))
            path.write_bytes(await value.read())
            return str(path)
        if not isinstance(value, str):
            raise ValueError(f"expected an upload or a URL for a {kind}, got {type(value).__name__}")
        known = files.lookup(value)
        if known is not None:
            return str(known)
        if value.startswith("data:"):
            header, _, data = value.partition(",")
            try:
                raw = base64.b64decode(data, validate=True) if header.endswith(";base64") else data.encode()
            except binascii.Error:
                raise ValueError("the data: URI is not valid base64") from None
            path = files.new_path(_suffix(None, header[5:].split(";")[0]))
            path.write_bytes(raw)
            return str(path)
        if value.startswith(("http://", "https://")):
            if not allow_url_fetch:
                raise ValueError("this server does not fetch URLs; upload the file")
            async with httpx.AsyncClient(timeout=60, follow_redirects=True) as client:
                resp = await client.get(value)
            if resp.status_code != 200:
                raise ValueError(f"fetching {value} gave HTTP {resp.status_code}")
            if len(resp.content) > MAX_FETCH_BYTES:
                raise ValueError(f"{value} is larger than {MAX_FETCH_BYTES >> 20} MiB")
            path = files.new_path(_suffix(value.rsplit("/", 1)[-1], resp.headers.get("content-type")))
            path.write_bytes(resp.content)
            return str(path)
        raise ValueError(f"{kind} arguments must be uploaded or given as an http(s) or data: URL, got {value[:80]!r}")

    def encode(result: ToolResult) -> dict:
        outs = []
        for value in result.outputs:
            kind = output_type(value)
            if kind in FILE_KINDS:
                path = Path(value.path)
                outs.append({"type": kind, "url": files.register(path), "name": path.name})
            else:
                outs.append({"type": kind, "value": value})
        return {"outputs": outs, "text": result.text(), "error": result.error}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "tools": len(by_name)}

    @app.get("/tools", dependencies=[Depends(check_key)])
    def list_tools() -> list[dict]:
        return [t.spec.to_dict() for t in by_name.values()]

    @app.get("/tools/{name}", dependencies=[Depends(check_key)])
    def describe(name: str) -> dict:
        return tool_or_404(name).spec.to_dict()

    @app.post("/tools/{name}", dependencies=[Depends(check_key)])
    async def call(name: str, request: Request) -> dict:
        t = tool_or_404(name)
        kinds = {p.name: p.type for p in t.spec.params}
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            args: Any = {k: v for k, v in form.multi_items()}
        else:
            try:
                args = await request.json()
            except ValueError:
                raise HTTPException(400, "the body must be a JSON object of arguments, or a multipart form") from None
        if not isinstance(args, dict):
            raise HTTPException(400, "the body must be a JSON object of arguments")
        try:
            for k, v in list(args.items()):
                if kinds.get(k) in FILE_KINDS:
                    args[k] = await file_argument(kinds[k], v)
                elif isinstance(v, UploadFile):
                    raise ValueError(f"argument {k!r} is not a file")
        except ValueError as e:
            return encode(ToolResult(error=f"argument error: {e}"))
        result = await run_in_threadpool(t, args)
        return encode(result)

    @app.get("/files/{fid}/{fname}", dependencies=[Depends(check_key)])
    def get_file(fid: str, fname: str):
        path = files.paths.get(fid)
        if path is None or path.name != fname or not path.is_file():
            raise HTTPException(404, "no such file")
        return FileResponse(path, filename=path.name)

    return app


def serve(tools: Sequence[Tool], host: str = "127.0.0.1", port: int = 8765, api_key: str | None = None) -> None:
    """Serves `tools` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(tools, api_key=api_key), host=host, port=port, log_level="info")
