"""Fixtures of tests/agent (helpers in agent_helpers.py)."""

import contextlib

import pytest
from agent_helpers import replay_openai_app, serving


@pytest.fixture
def openai_replay():
    """Start a replay server for a transcript: `url, requests = openai_replay(transcript)`."""
    stack = contextlib.ExitStack()

    def start(transcript):
        requests: list[dict] = []
        url = stack.enter_context(serving(replay_openai_app(transcript, requests)))
        return url + "/v1", requests

    with stack:
        yield start
