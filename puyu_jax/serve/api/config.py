"""`ServeConfig`: everything `puyu serve` needs, loaded from YAML plus `key=value` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

from puyu_jax.serve.config import EngineConfig


@dataclass(frozen=True)
class ServeConfig:
    """The OpenAI-compatible server.

    model: any source `load_pretrained` accepts (`smollm2`, a checkpoint dir, a .gguf, an HF dir).
    served_model_name: the `model` clients send ("" = the model source's last path part).
    api_keys: accepted bearer keys (empty: no authentication).
    max_concurrency: generation requests in flight (0: bounded only by engine.max_waiting).
    chat_template: a template name (internlm2, chatml, llama-3, ...) or jinja source instead of the model's own.
    drain_timeout_s: on SIGTERM, how long in-flight requests may run before they are aborted.
    warmup_batch_sizes: batch sizes compiled (greedy) before the port opens (empty: none).
    warmup_background: then compile every other batch bucket x sampling feature set in the background,
      while /health says "warming" (off: the first request of each new shape pays its compilation).
    """

    model: str = "smollm2"
    served_model_name: str = ""
    host: str = "127.0.0.1"
    port: int = 23333
    api_keys: tuple[str, ...] = ()
    max_concurrency: int = 0
    chat_template: str = ""
    drain_timeout_s: float = 30.0
    log_level: str = "info"
    warmup_batch_sizes: tuple[int, ...] = (1,)
    warmup_background: bool = True
    access_log: bool = False
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self):
        if not 0 <= self.port < 65536:
            raise ValueError(f"port={self.port} must be in [0, 65535]")
        if self.max_concurrency < 0:
            raise ValueError(f"max_concurrency={self.max_concurrency} must be >= 0")
        if self.drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s={self.drain_timeout_s} must be >= 0")
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError(f"log_level={self.log_level!r} must be critical|error|warning|info|debug")

    @property
    def model_name(self) -> str:
        from pathlib import Path

        return self.served_model_name or Path(self.model.rstrip("/")).name or self.model
