"""Fixtures for tests/eval: SmolLM2 loaded once, and a real OpenAI-compatible test server over it."""

import pytest


@pytest.fixture(scope="session")
def smollm2():
    from puyu_jax.pretrained import load_pretrained

    return load_pretrained("smollm2")


@pytest.fixture(scope="session")
def local_backend(smollm2):
    from puyu_jax.eval.backends.local import LocalBackend

    return LocalBackend(smollm2.model, smollm2.tokenizer, batch_size=8, name="local:smollm2:float32")


@pytest.fixture(scope="session")
def openai_server(smollm2):
    """(base URL, app) of the test server; `app.state.requests` records every request."""
    from eval_helpers import make_app, serving

    app = make_app(smollm2.model, smollm2.tokenizer)
    with serving(app) as url:
        yield url + "/v1", app
