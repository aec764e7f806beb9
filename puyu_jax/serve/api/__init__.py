"""The OpenAI-compatible HTTP server over the serving engine (`puyu serve`).

    from puyu_jax.serve.api import create_app
    app = create_app(async_engine, served_model_name="smollm2", api_keys=["sk-1"])

`app.py` routes, `handlers.py` the two generation endpoints, `chat.py` prompts from messages,
`tool_parsers.py` tool-call markup, `protocol.py` request schemas, `errors.py` the error shape
and status table, `metrics.py` Prometheus metrics, `static/` the web chat page.
"""

from puyu_jax.serve.api.config import ServeConfig

__all__ = ["create_app", "ServeConfig"]


def __getattr__(name: str):
    if name == "create_app":  # imported on first use: the CLI parser needs only ServeConfig
        from puyu_jax.serve.api.app import create_app

        return create_app
    raise AttributeError(f"module 'puyu_jax.serve.api' has no attribute {name!r}")
