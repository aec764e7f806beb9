"""`RemoteTool`: a tool served by `puyu tools serve`, used exactly like a local one.

    calc = RemoteTool.from_url("http://host:8765/tools/calculator", api_key="...")
    tools = RemoteTool.from_server("http://host:8765")      # every tool of a server

Local files given for image/audio/file arguments are uploaded; URLs are passed on for the
server to fetch. Files the tool returns are downloaded into `download_dir` and come back typed
(`Image`, `Audio`, `File`), so a remote tool's outputs look like a local tool's.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from puyu_jax.agent.tool import FILE_KINDS, TYPES, File, Tool, ToolResult, ToolSpec, check_arguments

__all__ = ["RemoteTool"]


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class RemoteTool(Tool):
    """A tool behind a tool server URL (`.../tools/NAME`).

    Args:
      url: the tool's URL.
      spec: its spec (as the server gives it).
      api_key: the server's key, if it has one.
      download_dir: where returned files are saved (a temporary folder when None).
      timeout: seconds per request.
    """

    def __init__(self, url: str, spec: ToolSpec, *, api_key: str | None = None,
                 download_dir: str | Path | None = None, timeout: float = 300.0):
        import httpx

        self.url = url.rstrip("/")
        self._spec = spec
        self.api_key = api_key
        self.download_dir = Path(download_dir) if download_dir else Path(tempfile.mkdtemp(prefix="puyu-remote-"))
        self.client = httpx.Client(timeout=timeout, headers=_headers(api_key))

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._spec.name

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    @property
    def server(self) -> str:
        return self.url.rsplit("/tools/", 1)[0]

    @classmethod
    def from_url(cls, url: str, *, api_key: str | None = None, **kwargs: Any) -> RemoteTool:
        """The tool at `url` (its spec is fetched from the server)."""
        import httpx

        resp = httpx.get(url, headers=_headers(api_key), timeout=30)
        resp.raise_for_status()
        return cls(url, ToolSpec.from_dict(resp.json()), api_key=api_key, **kwargs)

    @classmethod
    def from_server(cls, url: str, *, api_key: str | None = None, **kwargs: Any) -> list[RemoteTool]:
        """Every tool a server offers."""
        import httpx

        base = url.rstrip("/")
        resp = httpx.get(f"{base}/tools", headers=_headers(api_key), timeout=30)
        resp.raise_for_status()
        return [cls(f"{base}/tools/{d['name']}", ToolSpec.from_dict(d), api_key=api_key, **kwargs) for d in resp.json()]

    def check_args(self, args):
        """As for local tools, except that a file argument may also be a URL for the server to fetch."""
        if not isinstance(args, dict):
            return check_arguments(self.spec, args)
        urls = {p.name: args[p.name] for p in self.spec.params
                if p.type in FILE_KINDS and isinstance(args.get(p.name), str)
                and args[p.name].startswith(("http://", "https://", "data:"))}
        rest = {k: v for k, v in args.items() if k not in urls}
        local = dataclasses.replace(self.spec, params=tuple(p for p in self.spec.params if p.name not in urls))
        return {**check_arguments(local, rest), **urls}

    def __call__(self, args: dict | str | None = None) -> ToolResult:
        try:
            kwargs = self.check_args(args)
        except ValueError as e:
            return ToolResult(error=str(e))
        try:
            return self._post(kwargs)
        except Exception as e:  # a network failure is an observation too
            return ToolResult(error=f"{type(e).__name__}: {e}")

    def run(self, **kwargs: Any) -> Any:
        result = self._post(kwargs)
        if result.error is not None:
            raise RuntimeError(result.error)
        return result.outputs if len(result.outputs) != 1 else result.outputs[0]

    def _post(self, kwargs: dict) -> ToolResult:
        uploads = {k: v for k, v in kwargs.items() if isinstance(v, File)}
        if uploads:
            data = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in kwargs.items() if k not in uploads}
            handles = {k: open(v.path, "rb") for k, v in uploads.items()}
            try:
                files = {k: (Path(uploads[k].path).name, h, uploads[k].mime) for k, h in handles.items()}
                resp = self.client.post(self.url, data=data, files=files)
            finally:
                for h in handles.values():
                    h.close()
        else:
            resp = self.client.post(self.url, json=kwargs)
        if resp.status_code != 200:
            return ToolResult(error=f"the tool server answered HTTP {resp.status_code}: {resp.text[:500]}")
        body = resp.json()
        if body.get("error") is not None:
            return ToolResult(error=body["error"])
        return ToolResult(outputs=tuple(self._decode(o) for o in body["outputs"]))

    def _decode(self, out: dict) -> Any:
        kind = out["type"]
        if kind in FILE_KINDS:
            resp = self.client.get(self.server + out["url"])
            resp.raise_for_status()
            path = self.download_dir / out["name"]
            path.write_bytes(resp.content)
            return TYPES[kind][0](str(path))
        if kind == "number":
            return out["value"]
        if kind == "bool":
            return bool(out["value"])
        return out["value"] if isinstance(out["value"], str) else str(out["value"])
