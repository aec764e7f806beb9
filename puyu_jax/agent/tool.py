"""Tools declared once: typed parameters and returns, a JSON schema, one call path.

A tool is a `Tool` subclass whose `run` method is annotated, or a plain function wrapped by
`@tool`. Parameter types are Python types: `str` (text), `int`, `float` (number), `bool`,
and the file-like `Image`, `Audio`, `File` (a local path). A parameter's description comes
from `Annotated[T, "description"]`. From that one declaration come:

  * `ToolSpec`: name, description, typed params and returns (`to_dict` / `from_dict` for the wire);
  * the JSON schema of the parameters (`spec.json_schema()`), and the OpenAI `tools` entry;
  * argument checking and coercion (`Tool.__call__`): a bad call gives a `ToolResult` with an
    error message meant for the model, never an exception.
"""

from __future__ import annotations

import inspect
import json
import mimetypes
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Annotated, Callable, ClassVar

__all__ = [
    "Image", "Audio", "File", "Param", "ToolSpec", "ToolResult", "Tool", "FunctionTool", "tool",
    "TYPES", "FILE_KINDS", "render_output", "check_arguments", "coerce", "spec_from_function",
]


@dataclass(frozen=True)
class File:
    """A file on the local disk (tool input or output)."""

    path: str
    kind: ClassVar[str] = "file"

    @property
    def mime(self) -> str:
        return mimetypes.guess_type(self.path)[0] or "application/octet-stream"

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class Image(File):
    """An image file (PNG, JPEG, ...)."""

    kind: ClassVar[str] = "image"


@dataclass(frozen=True)
class Audio(File):
    """An audio file (WAV)."""

    kind: ClassVar[str] = "audio"


#: type name -> (Python type, JSON-schema type). File-like types travel as strings (a path or URL).
TYPES: dict[str, tuple[type, str]] = {
    "text": (str, "string"),
    "integer": (int, "integer"),
    "number": (float, "number"),
    "bool": (bool, "boolean"),
    "image": (Image, "string"),
    "audio": (Audio, "string"),
    "file": (File, "string"),
}
_BY_PYTYPE = {py: name for name, (py, _) in TYPES.items()}
FILE_KINDS = ("image", "audio", "file")


@dataclass(frozen=True)
class Param:
    """One typed parameter (or return value) of a tool."""

    name: str
    type: str  # a key of TYPES
    description: str = ""
    required: bool = True
    default: Any = None

    def schema(self) -> dict:
        s: dict[str, Any] = {"type": TYPES[self.type][1]}
        desc = self.description
        if self.type in FILE_KINDS:
            s["format"] = self.type
            desc = (desc + " " if desc else "") + f"({self.type} file path)"
        if desc:
            s["description"] = desc
        if not self.required:
            s["default"] = self.default
        return s


@dataclass(frozen=True)
class ToolSpec:
    """What a tool is and takes: the single source of every protocol's tool description."""

    name: str
    description: str
    params: tuple[Param, ...] = ()
    returns: tuple[Param, ...] = ()

    def json_schema(self) -> dict:
        """JSON schema (an object) of the parameters."""
        return {
            "type": "object",
            "properties": {p.name: p.schema() for p in self.params},
            "required": [p.name for p in self.params if p.required],
        }

    def openai(self) -> dict:
        """The entry of an OpenAI chat-completions `tools` list."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.json_schema()}}

    def to_dict(self) -> dict:
        """Wire form (the tool server's schema), also the InternLM2 plugin entry."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.json_schema(),
            "returns": [{"name": r.name, "type": r.type, "description": r.description} for r in self.returns],
        }

    @classmethod
    def from_dict(cls, d: dict) -> ToolSpec:
        props = d.get("parameters", {}).get("properties", {})
        required = set(d.get("parameters", {}).get("required", []))
        params = []
        for name, s in props.items():
            kind = s.get("format") if s.get("format") in FILE_KINDS else {
                "string": "text", "integer": "integer", "number": "number", "boolean": "bool"}.get(s.get("type"), "text")
            desc = s.get("description", "")
            if kind in FILE_KINDS:
                desc = desc.replace(f"({kind} file path)", "").strip()
            params.append(Param(name, kind, desc, name in required, s.get("default")))
        returns = tuple(Param(r["name"], r["type"], r.get("description", "")) for r in d.get("returns", []))
        return cls(d["name"], d.get("description", ""), tuple(params), returns)


@dataclass(frozen=True)
class ToolResult:
    """Typed outputs of one call, or the error the model should see."""

    outputs: tuple[Any, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def text(self) -> str:
        """The observation text shown to the model."""
        if self.error is not None:
            return f"Error: {self.error}"
        return "\n".join(render_output(o) for o in self.outputs)


def render_output(value: Any) -> str:
    """One output as observation text; files are named by kind and path."""
    if isinstance(value, File):
        return f"[{value.kind}: {value.path}]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _type_name(tp: Any, where: str) -> tuple[str, str]:
    """(type name, description) of an annotation, unwrapping Annotated."""
    desc = ""
    if typing.get_origin(tp) is Annotated:
        tp, *meta = typing.get_args(tp)
        desc = next((m for m in meta if isinstance(m, str)), "")
    if tp not in _BY_PYTYPE:
        raise TypeError(f"{where}: unsupported type {tp!r}; use one of str, int, float, bool, Image, Audio, File")
    return _BY_PYTYPE[tp], desc


def spec_from_function(fn: Callable, name: str, description: str) -> ToolSpec:
    """Derives a ToolSpec from an annotated signature (`self` excluded for methods)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.name == "self":
            continue
        if p.name not in hints:
            raise TypeError(f"tool {name!r}: parameter {p.name!r} has no type annotation")
        kind, desc = _type_name(hints[p.name], f"tool {name!r} parameter {p.name!r}")
        required = p.default is inspect.Parameter.empty
        params.append(Param(p.name, kind, desc, required, None if required else p.default))
    ret = hints.get("return")
    returns: list[Param] = []
    if ret is not None:
        parts = typing.get_args(ret) if typing.get_origin(ret) is tuple else (ret,)
        for i, r in enumerate(parts):
            kind, desc = _type_name(r, f"tool {name!r} return")
            returns.append(Param(f"output{i}" if len(parts) > 1 else "output", kind, desc))
    return ToolSpec(name, description, tuple(params), tuple(returns))


def coerce(param: Param, value: Any) -> Any:
    """Converts one JSON argument to the parameter's Python type; raises ValueError with a reason."""
    t = param.type
    if t == "text":
        if isinstance(value, (dict, list)):
            return json.dumps(value, ensure_ascii=False)
        return str(value)
    if t == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"expected true or false, got {value!r}")
    if t in ("integer", "number"):
        if isinstance(value, bool):
            raise ValueError(f"expected a {t}, got {value!r}")
        try:
            num = float(value) if t == "number" else int(str(value).strip())
        except (TypeError, ValueError):
            raise ValueError(f"expected a {t}, got {value!r}") from None
        return num
    py = TYPES[t][0]
    if isinstance(value, File):
        return py(value.path)
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected the path of a {t} file, got {value!r}")
    if not Path(value).expanduser().is_file():
        raise ValueError(f"no such {t} file: {value!r}")
    return py(str(Path(value).expanduser()))


def check_arguments(spec: ToolSpec, args: dict | str | None) -> dict:
    """Validated, coerced keyword arguments for `spec`; raises ValueError with a message for the model.

    A plain string is accepted for a tool with exactly one required text parameter.
    """
    if args is None:
        args = {}
    if isinstance(args, str):
        required = [p for p in spec.params if p.required]
        if len(required) == 1 and required[0].type == "text":
            args = {required[0].name: args}
        else:
            raise ValueError(f"arguments of {spec.name!r} must be a JSON object with keys "
                             f"{[p.name for p in spec.params]}")
    if not isinstance(args, dict):
        raise ValueError(f"arguments of {spec.name!r} must be a JSON object, got {type(args).__name__}")
    known = {p.name: p for p in spec.params}
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ValueError(f"{spec.name!r} has no parameter(s) {unknown}; its parameters are {sorted(known)}")
    out = {}
    for p in spec.params:
        if p.name not in args:
            if p.required:
                raise ValueError(f"{spec.name!r} needs the argument {p.name!r} ({p.type})")
            continue
        try:
            out[p.name] = coerce(p, args[p.name])
        except ValueError as e:
            raise ValueError(f"argument {p.name!r} of {spec.name!r}: {e}") from None
    return out


class Tool:
    """Base of all tools. Subclasses set `name`, `description` and write an annotated `run`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @property
    def spec(self) -> ToolSpec:
        cached = self.__dict__.get("_spec")
        if cached is None:
            cached = spec_from_function(type(self).run, self.name, self.description)
            self.__dict__["_spec"] = cached
        return cached

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{type(self).__name__} must define run()")

    def check_args(self, args: dict | str | None) -> dict:
        """Validated, coerced keyword arguments (see `check_arguments`)."""
        return check_arguments(self.spec, args)

    def __call__(self, args: dict | str | None = None) -> ToolResult:
        """Checks the arguments, runs the tool and wraps its outputs; errors become `ToolResult.error`."""
        try:
            kwargs = self.check_args(args)
        except ValueError as e:
            return ToolResult(error=str(e))
        try:
            out = self.run(**kwargs)
        except Exception as e:  # a tool failure is an observation for the model, not a crash
            return ToolResult(error=f"{type(e).__name__}: {e}")
        return ToolResult(outputs=out if isinstance(out, tuple) else (out,))

    def __repr__(self) -> str:
        return f"<tool {self.name}>"


@dataclass
class FunctionTool(Tool):
    """A tool made from an annotated function (see `tool`)."""

    fn: Callable[..., Any]
    tool_name: str
    tool_description: str
    _spec: ToolSpec = field(init=False, repr=False)

    def __post_init__(self):
        self._spec = spec_from_function(self.fn, self.tool_name, self.tool_description)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.tool_name

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    def run(self, **kwargs: Any) -> Any:
        return self.fn(**kwargs)


def tool(fn: Callable | None = None, *, name: str | None = None, description: str | None = None):
    """Decorator: `@tool` or `@tool(name=..., description=...)` turns a function into a Tool.

    The description defaults to the docstring's first paragraph.
    """

    def wrap(f: Callable) -> FunctionTool:
        desc = description if description is not None else (inspect.getdoc(f) or "").split("\n\n")[0]
        return FunctionTool(f, name or f.__name__, desc)

    return wrap(fn) if fn is not None else wrap
