"""Every YAML shipped under configs/ loads into its typed config."""

from pathlib import Path

import pytest

from puyu_jax.agent import AgentConfig
from puyu_jax.config import load_config
from puyu_jax.data.config import ProcessConfig, TokenizeConfig
from puyu_jax.finetune import FinetuneConfig
from puyu_jax.generate import GenerateRunConfig as GenerateConfig
from puyu_jax.models import ModelConfig
from puyu_jax.serve.api.config import ServeConfig
from puyu_jax.sweep import expand_sweep
from puyu_jax.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATA_KINDS = {"process": ProcessConfig, "tokenize": TokenizeConfig}
KINDS = {"models": ModelConfig, "generate": GenerateConfig, "pretrain": TrainConfig, "agent": AgentConfig, "finetune": FinetuneConfig, "serve": ServeConfig}


def test_every_config_directory_has_a_schema():
    dirs = {p.name for p in CONFIGS.iterdir() if p.is_dir()}
    known = set(KINDS) | {"sweeps", "data", "eval"}  # eval YAMLs: tests/eval/test_eval_datasets.py
    assert dirs <= known, f"no schema test for {sorted(dirs - known)}"


@pytest.mark.parametrize("path", sorted((CONFIGS / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_data_config_loads(path):
    kind = next(k for k in DATA_KINDS if path.stem.startswith(k))
    load_config(DATA_KINDS[kind], path)


@pytest.mark.parametrize("path", sorted(p for k in KINDS for p in (CONFIGS / k).glob("*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_loads(path):
    load_config(KINDS[path.parent.name], path)


@pytest.mark.parametrize("path", sorted((CONFIGS / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_sweep_expands(path):
    sweep = expand_sweep(path)
    assert sweep.points and len({p.hash for p in sweep.points}) == len(sweep.points)
