"""puyu-jax: the InternLM open-source LLM chain on JAX/Flax.

The public API is re-exported here, imported on first use (so that light processes,
such as data workers, do not pay for importing JAX); internals may move between modules.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "apply_chat_template": "puyu_jax.chat_templates",
    "render_chat": "puyu_jax.chat_templates",
    "ConfigError": "puyu_jax.config",
    "config_hash": "puyu_jax.config",
    "load_config": "puyu_jax.config",
    "save_run_config": "puyu_jax.config",
    "GenerateRunConfig": "puyu_jax.generate",
    "KVCache": "puyu_jax.models",
    "ModelConfig": "puyu_jax.models",
    "RopeConfig": "puyu_jax.models",
    "Transformer": "puyu_jax.models",
    "init_cache": "puyu_jax.models",
    "init_model": "puyu_jax.models",
    "Pretrained": "puyu_jax.pretrained",
    "load": "puyu_jax.pretrained",
    "load_pretrained": "puyu_jax.pretrained",
    "Projection": "puyu_jax.models",
    "ShardingPlan": "puyu_jax.parallel",
    "Tokenizer": "puyu_jax.tokenizer",
    "load_tokenizer": "puyu_jax.tokenizer",
    "TrainConfig": "puyu_jax.train.config",
    "FinetuneConfig": "puyu_jax.finetune",
    "finetune": "puyu_jax.finetune",
    "train": "puyu_jax.train.loop",
    "EngineConfig": "puyu_jax.serve.config",
    "GenerationConfig": "puyu_jax.serve.config",
    "LLMEngine": "puyu_jax.serve.engine",
    "AsyncEngine": "puyu_jax.serve.async_engine",
    "pipeline": "puyu_jax.serve.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'puyu_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
