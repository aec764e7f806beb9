"""puyu-jax: the InternLM open-source LLM chain on JAX/Flax."""

__version__ = "0.1.0"
