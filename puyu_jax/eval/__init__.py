"""Eval (OpenCompass on JAX): dataset configs, prompt templates, PPL / log-likelihood / gen
inferencers, evaluators (incl. sandboxed code execution and an LLM judge), partitioned
local / SLURM runs with a per-sample prediction cache, and summary tables and charts.

    from puyu_jax.eval import evaluate, load_dataset_config, LocalBackend
    results = evaluate(LocalBackend.from_source("smollm2"), load_dataset_config("arc-e"))
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DatasetConfig": "puyu_jax.eval.config",
    "EvalConfig": "puyu_jax.eval.config",
    "ModelSpec": "puyu_jax.eval.config",
    "load_dataset_config": "puyu_jax.eval.config",
    "evaluate": "puyu_jax.eval.core",
    "predict": "puyu_jax.eval.core",
    "score": "puyu_jax.eval.core",
    "load_dataset": "puyu_jax.eval.datasets",
    "PredictionCache": "puyu_jax.eval.cache",
    "make_backend": "puyu_jax.eval.backends",
    "LocalBackend": "puyu_jax.eval.backends.local",
    "OpenAIBackend": "puyu_jax.eval.backends.openai",
    "GoldBackend": "puyu_jax.eval.backends.checks",
    "ConstantBackend": "puyu_jax.eval.backends.checks",
    "run_eval": "puyu_jax.eval.runner",
    "write_summary": "puyu_jax.eval.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'puyu_jax.eval' has no attribute {name!r}")
