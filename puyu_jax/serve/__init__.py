"""Serving: the continuous-batching engine over a paged KV cache, the pipeline API, the server.

    from puyu_jax.serve import pipeline, GenerationConfig
    pipe = pipeline("smollm2")
    print(pipe("What is the capital of France?", GenerationConfig(max_new_tokens=32)).text)
"""

from puyu_jax.serve.config import EngineConfig, GenerationConfig
from puyu_jax.serve.errors import EngineDeadError, PromptTooLongError, QueueFullError
from puyu_jax.serve.outputs import CompletionOutput, EngineStats, RequestOutput, TokenLogprob

__all__ = [
    "AsyncEngine", "CompletionOutput", "EngineConfig", "EngineDeadError", "EngineStats", "GenerationConfig",
    "LLMEngine", "Pipeline", "PromptTooLongError", "QueueFullError", "RequestOutput", "Response", "TokenLogprob",
    "pipeline",
]

_LAZY = {
    "LLMEngine": "puyu_jax.serve.engine",
    "AsyncEngine": "puyu_jax.serve.async_engine",
    "Pipeline": "puyu_jax.serve.pipeline",
    "Response": "puyu_jax.serve.pipeline",
    "pipeline": "puyu_jax.serve.pipeline",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'puyu_jax.serve' has no attribute {name!r}")
