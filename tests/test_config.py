"""puyu_jax.config: YAML + overrides into frozen dataclasses, clear errors, hashing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import yaml

from puyu_jax.config import (
    ConfigError,
    config_hash,
    from_dict,
    load_config,
    save_run_config,
    to_dict,
    to_yaml,
)
from puyu_jax.models.config import ModelConfig, RopeConfig


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: Optional[int] = None


@dataclass(frozen=True)
class RunCfg:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hidden_size=64, num_layers=2))
    sampling: Sampling = field(default_factory=Sampling)
    name: str = "run"
    seed: int = 0
    lr: float = 1e-3
    compile: bool = True
    max_steps: Optional[int] = None
    shape: tuple[int, ...] = (1, 2)
    tags: list[str] = field(default_factory=list)
    extra: Optional[RopeConfig] = None

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_and_yaml(tmp_path):
    assert load_config(RunCfg) == RunCfg()
    p = write(tmp_path / "c.yaml", {"seed": 3, "model": {"num_layers": 4, "rope": {"theta": 5e5}}})
    cfg = load_config(RunCfg, p)
    assert cfg.seed == 3
    # a nested mapping merges into the parent's default (hidden_size=64 kept)
    assert cfg.model.num_layers == 4 and cfg.model.hidden_size == 64
    assert cfg.model.rope.theta == 500000.0 and isinstance(cfg.model.rope, RopeConfig)
    assert load_config(RunCfg, str(p)) == cfg


def test_overrides_coercion(tmp_path):
    cfg = load_config(
        RunCfg,
        {"name": "x"},
        [
            "seed=7",
            "lr=1e-4",
            "compile=false",
            "name=123",
            "max_steps=10",
            "shape=[3,4,5]",
            "tags=[a,b]",
            "sampling.temperature=0",
            "sampling.top_k=40",
            "model.rope.scaling=linear",
            "model.rope.factor=2",
        ],
    )
    assert cfg.seed == 7 and type(cfg.seed) is int
    assert cfg.lr == 1e-4 and type(cfg.lr) is float
    assert cfg.compile is False
    assert cfg.name == "123"  # str fields keep the text
    assert cfg.max_steps == 10
    assert cfg.shape == (3, 4, 5) and isinstance(cfg.shape, tuple)
    assert cfg.tags == ["a", "b"]
    assert cfg.sampling.temperature == 0.0 and type(cfg.sampling.temperature) is float
    assert cfg.sampling.top_k == 40
    assert cfg.model.rope == RopeConfig(scaling="linear", factor=2.0)

    cfg2 = load_config(RunCfg, None, ["max_steps=10", "max_steps=null", "sampling={top_p: 0.5}"])
    assert cfg2.max_steps is None
    assert cfg2.sampling == Sampling(top_p=0.5)
    # Optional nested config: None by default, created by a nested override
    cfg3 = load_config(RunCfg, None, ["extra.theta=7"])
    assert cfg3.extra == RopeConfig(theta=7.0)
    assert load_config(RunCfg, None, ['name="null"']).name == "null"


def test_frozen_result():
    cfg = load_config(RunCfg, None, ["seed=1"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.rope.theta = 1.0  # type: ignore[misc]
    # an instance can serve as the base
    assert load_config(RunCfg, cfg, ["lr=0.5"]) == dataclasses.replace(cfg, lr=0.5)


def test_unknown_key_top_level():
    with pytest.raises(ConfigError) as e:
        load_config(RunCfg, {"sede": 1})
    msg = str(e.value)
    assert "'sede'" in msg and "did you mean 'seed'" in msg and "valid keys:" in msg and "max_steps" in msg


def test_unknown_key_nested(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(RunCfg, None, ["model.hiden_size=3"])
    msg = str(e.value)
    assert "unknown key 'model.hiden_size'" in msg and "did you mean 'hidden_size'" in msg
    assert "num_kv_heads" in msg
    p = write(tmp_path / "c.yaml", {"model": {"rope": {"thetta": 1.0}}})
    with pytest.raises(ConfigError, match=r"unknown key 'model\.rope\.thetta' \(did you mean 'theta'\?\)"):
        load_config(RunCfg, p)
    with pytest.raises(ConfigError, match="not a config section"):
        load_config(RunCfg, None, ["seed.x=1"])


@pytest.mark.parametrize(
    "override, key, expected, given",
    [
        ("seed=abc", "seed", "int", "'abc'"),
        ("seed=1.5", "seed", "int", "1.5"),
        ("lr=fast", "lr", "float", "'fast'"),
        ("compile=maybe", "compile", "bool", "'maybe'"),
        ("seed=null", "seed", "int", "None"),
        ("shape=[1,x]", "shape", "tuple[int, ...]", "'x'"),
        ("model.rope.theta=big", "model.rope.theta", "float", "'big'"),
        ("sampling=7", "sampling", "Sampling", "7"),
    ],
)
def test_wrong_type(override, key, expected, given):
    with pytest.raises(ConfigError) as e:
        load_config(RunCfg, None, [override])
    msg = str(e.value)
    assert f"bad value for '{key}': expected {expected}, got " in msg
    assert given in msg


def test_malformed_override():
    with pytest.raises(ConfigError, match="malformed override 'seed'"):
        load_config(RunCfg, None, ["seed"])
    with pytest.raises(ConfigError, match="malformed"):
        load_config(RunCfg, None, ["=3"])


def test_post_init_errors_become_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="seed=-1 must be >= 0"):
        load_config(RunCfg, None, ["seed=-1"])
    with pytest.raises(ConfigError, match="model.rope.*scaling='bogus'"):
        load_config(RunCfg, {"model": {"rope": {"scaling": "bogus"}}})
    with pytest.raises(ConfigError, match="not a multiple"):
        load_config(ModelConfig, None, ["num_kv_heads=5"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(RunCfg, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(RunCfg, tmp_path / "list.yaml")


def test_hash_stability(tmp_path):
    p = write(tmp_path / "c.yaml", {"seed": 5, "lr": 0.01, "model": {"num_layers": 3}, "shape": [2, 2]})
    a = load_config(RunCfg, p)
    b = load_config(RunCfg, {"seed": 5, "lr": 0.01, "model": {"num_layers": 3}, "shape": (2, 2)})
    c = load_config(RunCfg, None, ["seed=5", "lr=1e-2", "model.num_layers=3", "shape=[2,2]"])
    d = load_config(RunCfg, p, ["seed=5"])
    assert a == b == c == d
    assert config_hash(a) == config_hash(b) == config_hash(c) == config_hash(d)
    assert len(config_hash(a)) == 12
    assert config_hash(load_config(RunCfg, p, ["seed=6"])) != config_hash(a)
    assert config_hash(load_config(RunCfg, p, ["model.rope.theta=1.5"])) != config_hash(a)


def test_to_dict_yaml_and_from_dict():
    cfg = load_config(RunCfg, None, ["shape=[1,2,3]", "tags=[x]"])
    d = to_dict(cfg)
    assert d["shape"] == [1, 2, 3] and d["model"]["rope"]["theta"] == 10000.0
    assert yaml.safe_load(to_yaml(cfg)) == d
    assert from_dict(RunCfg, d) == cfg
    assert from_dict(RunCfg, {"seed": 2}, ["lr=0.5"]) == RunCfg(seed=2, lr=0.5)


def test_save_run_config_roundtrip(tmp_path):
    cfg = load_config(RunCfg, None, ["seed=9", "model.rope.scaling=llama3", "max_steps=3", "lr=3e-5"])
    digest = save_run_config(cfg, tmp_path / "run")
    assert digest == config_hash(cfg)
    assert (tmp_path / "run" / "config.hash").read_text().strip() == digest
    back = load_config(RunCfg, tmp_path / "run" / "config.yaml")
    assert back == cfg and config_hash(back) == digest


def test_named_subconfig(tmp_path, monkeypatch):
    root = tmp_path / "cfgs"
    write(root / "models" / "tiny.yaml", {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2})
    monkeypatch.setenv("PUYU_CONFIGS", str(root))
    p = write(tmp_path / "run.yaml", {"model": "tiny", "seed": 1})
    cfg = load_config(RunCfg, p, ["model.num_layers=2"])
    # the named file replaces the whole sub-config, on top of ModelConfig's own defaults
    assert cfg.model == ModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)
    # as an override, and as a path relative to the including file
    assert load_config(RunCfg, None, ["model=tiny", "model.num_layers=2", "seed=1"]) == cfg
    write(tmp_path / "sub" / "m.yaml", {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2})
    p2 = write(tmp_path / "run2.yaml", {"model": "sub/m.yaml", "seed": 1})
    assert load_config(RunCfg, p2) == cfg
    with pytest.raises(ConfigError, match=r"no config named 'tinyy'.*did you mean 'tiny'"):
        load_config(RunCfg, {"model": "tinyy"})
    write(root / "models" / "bad.yaml", {"hidden_sise": 3})
    with pytest.raises(ConfigError, match=r"unknown key 'model\.hidden_sise'"):
        load_config(RunCfg, {"model": "bad"})


def test_dotted_keys_in_a_file_apply_after_a_named_sub_config(tmp_path):
    from puyu_jax.models.config import ModelConfig

    @dataclasses.dataclass(frozen=True)
    class Run:
        model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
        steps: int = 1

    f = tmp_path / "run.yaml"
    f.write_text("model: tiny\nmodel.dtype: bfloat16\nsteps: 3\n")
    cfg = load_config(Run, f)
    assert cfg.model.dtype == "bfloat16" and cfg.model.num_layers == 2 and cfg.steps == 3
    f.write_text("model: tiny\nmodel.dtyp: bfloat16\n")
    with pytest.raises(ConfigError, match="model.dtyp"):
        load_config(Run, f)
