"""Loading run configs: frozen dataclasses filled from YAML, dicts and `a.b=c` overrides.

OmegaConf structured configs do the type coercion (``"3"`` -> 3 for an int field,
lists into ``tuple[int, ...]`` fields, ...); this module walks the dataclass types
itself so that every error names the full dotted key, the valid choices and a
"did you mean" suggestion, and it builds the final (frozen) dataclass objects.

Supported field types: int, float, bool, str, Enum, ``Optional[...]``, nested
dataclasses (also ``Optional``), ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``
and ``Any``. ``Literal`` and general ``Union`` are not supported by OmegaConf 2.3;
use ``str`` plus a check in ``__post_init__`` (as `ModelConfig` does).

An *embedded* sub-config (``field(metadata={"embed": True})``, e.g. the `TrainConfig`
inside `FinetuneConfig`) is written flat: its keys sit at the parent's level (``steps:
16`` sets ``train.steps``), except those the parent declares itself, and `to_dict`
writes them back flat. The dotted form (``train.steps=16``) works too.

A YAML value for a nested-dataclass field may be a string naming another YAML file:
a path (relative to the including file, the working directory or the repo root) or a
bare name looked up as ``configs/<field>s/NAME.yaml`` (the configs directory is
``$PUYU_CONFIGS`` when set, else ``<repo>/configs``). The named file replaces the
whole sub-config (on top of that dataclass type's own defaults).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_HASH_LEN = 12


class ConfigError(ValueError):
    """A config could not be loaded: unknown key, bad value, bad file or failed validation."""


# ---------------------------------------------------------------------------
# type introspection


def configs_dir() -> Path:
    """The directory holding named configs: ``$PUYU_CONFIGS`` or ``<repo>/configs``."""
    env = os.environ.get("PUYU_CONFIGS")
    return Path(env).expanduser() if env else REPO_ROOT / "configs"


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of the init fields of dataclass `cls`, in field order."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception as e:  # unresolvable forward reference
        raise ConfigError(f"cannot resolve the field types of {cls.__name__}: {e}") from e
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


@functools.cache
def _embedded(cls: type) -> dict[str, type]:
    """Embedded sub-config fields of `cls` (metadata ``embed=True``): name -> dataclass type."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.init and f.metadata.get("embed"):
            sub = _dataclass_type(_field_types(cls)[f.name])
            if sub is None:
                raise ConfigError(f"{cls.__name__}.{f.name}: only a dataclass field can be embedded")
            out[f.name] = sub
    return out


def _promoted(cls: type, key: str) -> str | None:
    """The embedded field of `cls` through which a key `cls` does not declare is set."""
    if key in _field_types(cls):
        return None
    for name, sub in _embedded(cls).items():
        if key in _field_types(sub):
            return name
    return None


def _valid_keys(cls: type) -> list[str]:
    own = list(_field_types(cls))
    return own + [k for sub in _embedded(cls).values() for k in _field_types(sub) if k not in own]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass type behind `tp` (also through Optional), else None."""
    inner, _ = _unwrap_optional(tp)
    return inner if isinstance(inner, type) and dataclasses.is_dataclass(inner) else None


def _is_container_type(tp: Any) -> bool:
    """Whether `tp` is something OmegaConf can index into (dict, list, tuple, Any)."""
    inner, _ = _unwrap_optional(tp)
    return inner is Any or inner is object or typing.get_origin(inner) in (dict, list, tuple) or (
        inner in (dict, list, tuple)
    )


def _type_name(tp: Any) -> str:
    """A short human name for a type annotation."""
    inner, optional = _unwrap_optional(tp)
    if optional:
        return f"Optional[{_type_name(inner)}]"
    if isinstance(inner, type) and not typing.get_args(inner):
        return inner.__name__
    return str(inner).replace("typing.", "")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _unknown_key(full_key: str, key: str, choices: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown key '{full_key}'{hint}; valid keys: {', '.join(choices)}")


# ---------------------------------------------------------------------------
# YAML files and references to them


def _read_yaml(path: Path) -> dict:
    """Load a YAML mapping (an empty file is ``{}``)."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse YAML {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _resolve_ref(field_name: str, full_key: str, ref: str, base_dir: Path | None) -> Path:
    """Find the YAML file a string value of a nested-config field names."""
    p = Path(ref).expanduser()
    if p.is_absolute() or "/" in ref or p.suffix in (".yaml", ".yml"):
        if p.is_absolute():
            candidates = [p]
        else:
            candidates = [d / p for d in (base_dir, Path.cwd(), REPO_ROOT) if d is not None]
        for c in candidates:
            if c.is_file():
                return c
        tried = ", ".join(str(c) for c in candidates)
        raise ConfigError(f"'{full_key}': config file {ref!r} not found (tried {tried})")
    root = configs_dir()
    dirs = [root / f"{field_name}s", root / field_name]
    for d in dirs:
        for suffix in (".yaml", ".yml"):
            if (d / f"{ref}{suffix}").is_file():
                return d / f"{ref}{suffix}"
    names = sorted({f.stem for d in dirs if d.is_dir() for f in d.iterdir() if f.suffix in (".yaml", ".yml")})
    close = difflib.get_close_matches(ref, names, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    avail = f"; available: {', '.join(names)}" if names else ""
    raise ConfigError(f"'{full_key}': no config named {ref!r} in {dirs[0]}{hint}{avail}")


# ---------------------------------------------------------------------------
# OmegaConf nodes


def _make_writable(node: Any) -> None:
    """Clear the read-only flag OmegaConf puts on nodes of frozen dataclasses, recursively."""
    if isinstance(node, (DictConfig, ListConfig)):
        OmegaConf.set_readonly(node, False)
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for k in list(keys):
            _make_writable(node._get_node(k))


def _fresh(cls_or_obj: Any, path: str) -> DictConfig:
    """A writable structured node from a dataclass type (its defaults) or instance."""
    try:
        node = OmegaConf.structured(cls_or_obj)
    except OmegaConfBaseException as e:
        name = getattr(cls_or_obj, "__name__", type(cls_or_obj).__name__)
        where = f" at '{path}'" if path else ""
        raise ConfigError(f"cannot build a structured config from {name}{where}: {_first_line(e)}") from e
    _make_writable(node)
    return node


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _set_leaf(node: DictConfig, key: str, value: Any, full_key: str, tp: Any) -> None:
    """Assign a value, letting OmegaConf coerce it to the field type; errors name the key."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = _fresh(value, full_key)
    try:
        node[key] = value
    except OmegaConfBaseException as e:
        raise ConfigError(
            f"bad value for '{full_key}': expected {_type_name(tp)}, got {value!r} ({_first_line(e)})"
        ) from e


def _merge(node: DictConfig, cls: type, data: Mapping, path: str, base_dir: Path | None) -> None:
    """Merge a plain mapping into the structured node of dataclass `cls`, checking every key."""
    if not isinstance(data, Mapping):
        where = f"'{path}'" if path else "the config"
        raise ConfigError(f"{where} must be a mapping of {cls.__name__} fields, got {data!r}")
    fields = _field_types(cls)
    for key, value in data.items():
        full_key = _join(path, str(key))
        via = _promoted(cls, key)
        if via is not None:
            _assign(node[via], _embedded(cls)[via], key, value, full_key, base_dir)
            continue
        if key not in fields:
            raise _unknown_key(full_key, str(key), _valid_keys(cls))
        _assign(node, cls, key, value, full_key, base_dir)


def _assign(node: DictConfig, cls: type, key: str, value: Any, full_key: str, base_dir: Path | None) -> None:
    """Set field `key` of the `cls` node: merges mappings into nested configs, follows file refs."""
    tp = _field_types(cls)[key]
    sub_cls = _dataclass_type(tp)
    if sub_cls is not None and isinstance(value, str) and not value.startswith("${"):
        ref = _resolve_ref(key, full_key, value, base_dir)
        sub = _fresh(sub_cls, full_key)
        _merge(sub, sub_cls, _read_yaml(ref), full_key, ref.parent)
        _set_leaf(node, key, sub, full_key, tp)
    elif sub_cls is not None and isinstance(value, Mapping):
        if OmegaConf.is_missing(node, key) or node[key] is None:
            _set_leaf(node, key, _fresh(sub_cls, full_key), full_key, tp)
        _merge(node[key], sub_cls, value, full_key, base_dir)
    else:
        _set_leaf(node, key, value, full_key, tp)


# ---------------------------------------------------------------------------
# overrides


def parse_override(text: str) -> tuple[str, str]:
    """Split an ``a.b=c`` override into (``"a.b"``, ``"c"``).

    Raises:
        ConfigError: when there is no ``=`` or the key is empty.
    """
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"malformed override {text!r}: expected KEY=VALUE, e.g. model.hidden_size=64")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"malformed override {text!r}: empty key")
    return key, raw


def _parse_value(raw: str, tp: Any) -> Any:
    """YAML-parse an override value; str fields keep the raw text unless quoted or null."""
    inner, _ = _unwrap_optional(tp)
    stripped = raw.strip()
    if inner is str and not (
        stripped in ("null", "~") or (len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"")
    ):
        return raw
    if stripped == "":
        return None
    try:
        return yaml.safe_load(stripped)
    except yaml.YAMLError:
        return raw


def _apply_override(root: DictConfig, cls: type, key: str, raw: str | None, value: Any = None) -> None:
    """Apply one override ``key=raw`` (or ``key`` := already-parsed `value` when raw is None)."""
    parts = key.split(".")
    node, cur_cls, path = root, cls, ""
    for i, part in enumerate(parts):
        full_key = _join(path, part)
        via = _promoted(cur_cls, part)
        if via is not None:
            node, cur_cls = node[via], _embedded(cur_cls)[via]
        fields = _field_types(cur_cls)
        if part not in fields:
            raise _unknown_key(full_key, part, _valid_keys(cur_cls))
        tp = fields[part]
        if i == len(parts) - 1:
            parsed = _parse_value(raw, tp) if raw is not None else value
            _assign(node, cur_cls, part, parsed, full_key, None)
            return
        sub_cls = _dataclass_type(tp)
        if sub_cls is not None:
            if node[part] is None:
                _set_leaf(node, part, _fresh(sub_cls, full_key), full_key, tp)
            node, cur_cls, path = node[part], sub_cls, full_key
            continue
        if not _is_container_type(tp):
            raise ConfigError(f"bad key '{key}': '{full_key}' is of type {_type_name(tp)}, not a config section")
        rest = ".".join(parts[i + 1 :])
        parsed = _parse_value(raw, Any) if raw is not None else value
        try:
            OmegaConf.update(node, f"{part}.{rest}", parsed, merge=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"bad override for '{key}' (value {parsed!r}): {_first_line(e)}") from e
        return


# ---------------------------------------------------------------------------
# building the dataclass objects


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Turn a plain container value into the annotated type (dataclasses, tuples)."""
    if value is None:
        return None
    inner, _ = _unwrap_optional(tp)
    if isinstance(inner, type) and dataclasses.is_dataclass(inner):
        return _build(inner, value, path)
    origin = typing.get_origin(inner)
    args = typing.get_args(inner)
    if origin is tuple or inner is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, _join(path, i)) for i, v in enumerate(value))
        if args and len(args) == len(value):
            return tuple(_convert(a, v, _join(path, i)) for i, (a, v) in enumerate(zip(args, value)))
        return tuple(value)
    if origin is list:
        return [_convert(args[0] if args else Any, v, _join(path, i)) for i, v in enumerate(value)]
    if origin is dict:
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(vt, v, _join(path, str(k))) for k, v in value.items()}
    return value


def _build(cls: type[T], data: Mapping, path: str) -> T:
    """Instantiate dataclass `cls` from a resolved plain mapping; wraps validation errors."""
    fields = _field_types(cls)
    kwargs = {name: _convert(tp, data[name], _join(path, name)) for name, tp in fields.items() if name in data}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        where = f"'{path}'" if path else cls.__name__
        raise ConfigError(f"invalid {where}: {e}") from e


# ---------------------------------------------------------------------------
# public API


def load_config(
    cls: type[T],
    source: str | Path | Mapping | T | None = None,
    overrides: Sequence[str | tuple[str, Any]] = (),
) -> T:
    """Build a frozen config dataclass from defaults, a YAML file or dict, and overrides.

    Args:
        cls: the (frozen) dataclass type to build.
        source: a YAML path, a mapping, an instance of `cls` (used as the base), or
            None for the defaults.
        overrides: ``"a.b=c"`` strings applied in order after `source`; values are YAML
            (``a.b=[1,2]``, ``a.b=null``) coerced to the field type. A string for a
            nested-config field names a YAML file (see the module docstring). An item
            may also be a ``(dotted_key, value)`` pair whose value is already parsed.

    Returns:
        An instance of `cls`.

    Raises:
        ConfigError: unknown key, bad value, malformed override, missing file or a
            ``__post_init__`` validation error.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    if isinstance(overrides, str):
        overrides = [overrides]
    dotted: list[tuple[str, Any]] = []
    if isinstance(source, cls):
        root = _fresh(source, "")
    else:
        root = _fresh(cls, "")
        if isinstance(source, (str, Path)):
            path = Path(source).expanduser()
            try:
                data, dotted = _split_dotted(_read_yaml(path))
                _merge(root, cls, data, "", path.resolve().parent)
                for key, value in dotted:
                    _apply_override(root, cls, key, None, value)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from e
        elif isinstance(source, Mapping):
            data, dotted = _split_dotted(source)
            _merge(root, cls, data, "", None)
            for key, value in dotted:
                _apply_override(root, cls, key, None, value)
        elif source is not None:
            raise ConfigError(f"config source must be a path, a mapping or None, got {type(source).__name__}")
    for item in overrides:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            _apply_override(root, cls, item[0], None, item[1])
        else:
            key, raw = parse_override(item)
            _apply_override(root, cls, key, raw)
    return _finish(cls, root)


def _split_dotted(data: Mapping) -> tuple[dict, list[tuple[str, Any]]]:
    """Top-level ``a.b: value`` keys of a file are applied like overrides, after the rest
    (so ``model: llama2-7b`` and ``model.dtype: bfloat16`` can sit side by side)."""
    plain = {k: v for k, v in data.items() if not (isinstance(k, str) and "." in k)}
    return plain, [(k, v) for k, v in data.items() if isinstance(k, str) and "." in k]


def _finish(cls: type[T], root: DictConfig) -> T:
    """Resolve interpolations, check for missing values and build the dataclass."""
    try:
        data = OmegaConf.to_container(root, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        raise ConfigError(f"cannot resolve '{key}': {_first_line(e)}") from e
    return _build(cls, data, "")


def from_dict(cls: type[T], data: Mapping, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from a (possibly partial) plain mapping, e.g. one from `to_dict`.

    Args:
        cls: the dataclass type.
        data: field values; nested configs as mappings (or file references).
        overrides: optional ``a.b=c`` strings applied afterwards.

    Returns:
        An instance of `cls`.
    """
    return load_config(cls, dict(data), overrides)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            if not f.init:
                continue
            if f.metadata.get("embed"):  # written flat; keys the parent declares itself are left out
                sub = _plain(getattr(value, f.name))
                out.update({k: v for k, v in sub.items() if k not in _field_types(type(value))})
            else:
                out[f.name] = _plain(getattr(value, f.name))
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, Path):
        return str(value)
    return value


def to_dict(cfg: Any) -> dict:
    """A plain, YAML/JSON-safe nested dict of a config (tuples become lists, enums names).

    Args:
        cfg: a dataclass instance.

    Returns:
        The init fields, recursively.
    """
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"to_dict needs a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


def to_yaml(cfg: Any) -> str:
    """The config as YAML text (field order kept); `load_config` reads it back."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True, default_flow_style=False)


def config_hash(cfg: Any) -> str:
    """Content hash of a config: sha256 of its canonical JSON (sorted keys), 12 hex chars.

    Equal configs hash equally however they were produced (YAML, dict, overrides).
    """
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:CONFIG_HASH_LEN]


def save_run_config(cfg: Any, out_dir: str | Path) -> str:
    """Write ``out_dir/config.yaml`` (fully resolved) and ``out_dir/config.hash``.

    Args:
        cfg: the config dataclass instance.
        out_dir: the run directory (created if needed).

    Returns:
        The config hash.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digest = config_hash(cfg)
    (out / "config.yaml").write_text(to_yaml(cfg))
    (out / "config.hash").write_text(digest + "\n")
    return digest
