"""puyu-jax: the InternLM open-source LLM chain on JAX/Flax.

The public API is re-exported here; internals may move between modules.
"""

__version__ = "0.1.0"

from puyu_jax.chat_templates import apply_chat_template, render_chat
from puyu_jax.config import ConfigError, config_hash, load_config, save_run_config
from puyu_jax.generate import GenerateConfig, Generator, SamplingConfig
from puyu_jax.models import KVCache, ModelConfig, RopeConfig, Transformer, init_cache, init_model
from puyu_jax.pretrained import Pretrained, load_pretrained
from puyu_jax.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "ConfigError",
    "GenerateConfig",
    "Generator",
    "KVCache",
    "ModelConfig",
    "Pretrained",
    "RopeConfig",
    "SamplingConfig",
    "Tokenizer",
    "Transformer",
    "apply_chat_template",
    "config_hash",
    "init_cache",
    "init_model",
    "load_config",
    "load_pretrained",
    "load_tokenizer",
    "render_chat",
    "save_run_config",
]
