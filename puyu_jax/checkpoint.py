"""The puyu checkpoint directory (conversion between formats: `puyu_jax.pretrained.convert`).

    <dir>/model.yaml   ModelConfig as YAML (dataclasses.asdict, nested rope)
    <dir>/params/      orbax StandardCheckpointer save of the nested parameter dict
    <dir>/tokenizer/   optional tokenizer files

Parameters move in and out as the flat dict (`"layers/0/attn/q_proj/kernel"` ->
array, see `puyu_jax.models.hf`); on disk the '/' keys are nested dicts.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from puyu_jax.models.config import ModelConfig, RopeConfig
from puyu_jax.models.hf import _dtype_name, _is_float, np_dtype

PathLike = str | os.PathLike
MODEL_YAML = "model.yaml"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"


# ---------------------------------------------------------------------------
# model.yaml
# ---------------------------------------------------------------------------


def model_config_to_yaml(cfg: ModelConfig) -> str:
    """cfg as YAML text (dataclasses.asdict; rope nested)."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def model_config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
    """ModelConfig from a plain dict (as in model.yaml); unknown keys are an error."""
    d = dict(d)
    rope = d.pop("rope", None) or {}
    for cls, vals in ((ModelConfig, d), (RopeConfig, rope)):
        unknown = set(vals) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return ModelConfig(**d, rope=RopeConfig(**rope))


def model_config_from_yaml(path: PathLike) -> ModelConfig:
    """ModelConfig from a model.yaml file, or from a checkpoint directory containing one."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_YAML
    d = yaml.safe_load(path.read_text())
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping")
    return model_config_from_dict(d)


# ---------------------------------------------------------------------------
# params
# ---------------------------------------------------------------------------


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b": x} -> {"a": {"b": x}}."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        *parents, leaf = key.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"key {key!r} collides with a parameter at {p!r}")
        if leaf in node:
            raise ValueError(f"key {key!r} collides with a parameter group")
        node[leaf] = v
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of `nest`."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out |= flatten(v, f"{prefix}{k}/")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _as_array(x: Any) -> Any:
    import jax

    return x if isinstance(x, jax.Array) else np.asarray(x)


def is_checkpoint(path: PathLike) -> bool:
    """Whether path is a puyu checkpoint directory."""
    path = Path(path)
    return (path / MODEL_YAML).is_file() and (path / PARAMS_DIR).is_dir()


def save_checkpoint(
    path: PathLike,
    cfg: ModelConfig,
    flat: Mapping[str, Any],
    *,
    tokenizer_files: Mapping[str, bytes | PathLike] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a puyu checkpoint directory (model.yaml, params/, tokenizer/ when
    `tokenizer_files` is given, even empty). Values may be numpy or jax arrays
    (sharded jax arrays are written without gathering). Returns the directory."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    params = path / PARAMS_DIR
    if params.exists():
        if not overwrite:
            raise FileExistsError(f"{params} exists (pass overwrite=True to replace it)")
        shutil.rmtree(params)
    path.mkdir(parents=True, exist_ok=True)
    tree = nest({k: _as_array(v) for k, v in flat.items()})
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(params, tree)
        ckptr.wait_until_finished()
    (path / MODEL_YAML).write_text(model_config_to_yaml(cfg))
    if tokenizer_files is not None:
        tok = path / TOKENIZER_DIR
        tok.mkdir(exist_ok=True)
        for name, content in tokenizer_files.items():
            if isinstance(content, bytes):
                (tok / name).write_bytes(content)
            else:
                shutil.copyfile(content, tok / name)
    return path


def checkpoint_shapes(path: PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Flat key -> (shape, dtype) of a checkpoint's params, from its metadata (no data read)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(Path(path).absolute() / PARAMS_DIR)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    return {k: (tuple(m.shape), np.dtype(m.dtype)) for k, m in flatten(tree).items()}


def load_checkpoint(
    path: PathLike,
    *,
    dtype: Any = None,
    shardings: Mapping[str, Any] | None = None,
) -> tuple[ModelConfig, dict[str, Any]]:
    """Read a puyu checkpoint directory into (cfg, flat).

    Values are numpy arrays, except keys in `shardings` (flat key ->
    `jax.sharding.Sharding`), which are restored directly as sharded jax arrays.
    `dtype` casts floating parameters (and sets cfg.param_dtype).
    """
    import jax
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    cfg = model_config_from_yaml(path / MODEL_YAML)
    shardings = dict(shardings or {})
    stored = checkpoint_shapes(path)
    unknown = sorted(set(shardings) - set(stored))
    if unknown:
        raise KeyError(f"shardings for parameters not in the checkpoint: {unknown}")
    target = {}
    for k, (shape, dt) in stored.items():
        want = np_dtype(dtype) if dtype is not None and _is_float(dt) else dt
        target[k] = jax.ShapeDtypeStruct(shape, want, sharding=shardings.get(k))
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path / PARAMS_DIR, nest(target))
    flat = {k: v if k in shardings else np.asarray(v) for k, v in flatten(restored).items()}
    if dtype is not None and (name := _dtype_name(np_dtype(dtype))):
        cfg = cfg.replace(param_dtype=name)
    return cfg, flat
