"""Shared helpers for the data tests: fixture paths and small config builders."""

import json
import pathlib

import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def read_jsonl(path):
    return [json.loads(l) for l in pathlib.Path(path).read_text(encoding="utf-8").splitlines() if l.strip()]


@pytest.fixture(scope="session")
def fixtures() -> pathlib.Path:
    return FIXTURES


def process_config(out_dir, paths, **over):
    """A ProcessConfig over `paths` writing to `out_dir` (in-process, no progress bar)."""
    from puyu_jax.config import load_config
    from puyu_jax.data.config import ProcessConfig

    data = {"input": {"paths": [str(p) for p in paths]}, "output": {"dir": str(out_dir)},
            "num_workers": 1, "progress": False}
    for k, v in over.items():
        data[k] = v
    return load_config(ProcessConfig, data)
