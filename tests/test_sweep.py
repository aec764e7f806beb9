"""puyu_jax.sweep: grid/points expansion, hashed run dirs, caching, failures, summaries."""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from puyu_jax import sweep as sweep_mod
from puyu_jax.config import ConfigError, config_hash, load_config
from puyu_jax.sweep import RUNS, expand_sweep, register_run, run_sweep


@dataclass(frozen=True)
class ToySampling:
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass(frozen=True)
class ToyCfg:
    sampling: ToySampling = field(default_factory=ToySampling)
    seed: int = 0
    max_new_tokens: int = 4


KIND = "toy-test"


@pytest.fixture
def calls():
    """Registers the toy run kind; yields the list of configs it was called with."""
    seen: list[ToyCfg] = []

    def fn(cfg: ToyCfg, out_dir: Path) -> dict:
        seen.append(cfg)
        if cfg.seed == 13:
            raise RuntimeError("unlucky seed")
        (out_dir / "out.txt").write_text(f"{cfg.seed}\n")
        return {
            "score": cfg.sampling.temperature * 10 + cfg.sampling.top_p + cfg.seed,
            "tokens": cfg.max_new_tokens,
            "label": f"s{cfg.seed}",
        }

    register_run(KIND, ToyCfg, fn)
    yield seen
    RUNS.pop(KIND, None)


def write_sweep(tmp_path: Path, spec: dict, name: str = "demo.yaml") -> Path:
    path = tmp_path / "sweeps" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = {"run": KIND, "out_dir": str(tmp_path / "out"), **spec}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_grid_points_dirs_cache_and_summary(tmp_path, calls):
    (tmp_path / "sweeps" / "base.yaml").parent.mkdir(parents=True)
    (tmp_path / "sweeps" / "base.yaml").write_text("max_new_tokens: 2\nsampling: {top_p: 0.5}\n")
    path = write_sweep(
        tmp_path,
        {
            "base": "base.yaml",  # relative to the sweep file
            "overrides": ["max_new_tokens=8"],
            "grid": {"sampling.temperature": [0.0, 0.7], "sampling.top_p": [1.0, 0.9]},
            "points": [["seed=1"], ["seed=2"]],
        },
    )
    sw = expand_sweep(path)
    assert len(sw.points) == 2 * 2 * 2
    assert sw.columns == ("seed", "sampling.temperature", "sampling.top_p")
    first = sw.points[0]
    assert first.overrides == ("max_new_tokens=8", "seed=1", "sampling.temperature=0.0", "sampling.top_p=1.0")
    assert first.config == ToyCfg(ToySampling(0.0, 1.0), seed=1, max_new_tokens=8)
    assert first.hash == config_hash(first.config)

    console = quiet()
    rows = run_sweep(path, console=console)
    assert len(rows) == 8 and len(calls) == 8
    assert all(r["status"] == "ok" for r in rows)
    out = tmp_path / "out"
    for point, row in zip(sw.points, rows):
        d = out / point.hash
        for name in ("config.yaml", "config.hash", "metrics.json", "DONE", "out.txt"):
            assert (d / name).is_file(), (d, name)
        assert (d / "config.hash").read_text().strip() == point.hash
        assert load_config(ToyCfg, d / "config.yaml") == point.config
        cfg = point.config
        expected = cfg.sampling.temperature * 10 + cfg.sampling.top_p + cfg.seed
        assert json.loads((d / "metrics.json").read_text())["score"] == pytest.approx(expected)
        assert row["score"] == pytest.approx(expected) and row["hash"] == point.hash
        assert row["sampling.temperature"] == point.varying["sampling.temperature"]
    text = console.file.getvalue()
    assert "sampling.temperature" in text and "score" in text and first.hash in text

    md = (out / "summary.md").read_text().splitlines()
    assert md[0].startswith("| index | hash | seed | sampling.temperature | sampling.top_p | status | score")
    assert len(md) == 2 + 8
    with (out / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and table[0]["label"] == "s1" and table[0]["status"] == "ok"

    # second run: everything cached, fn not called again, metrics read back
    rows2 = run_sweep(path, console=quiet())
    assert len(calls) == 8
    assert [r["status"] for r in rows2] == ["cached"] * 8
    assert [r["score"] for r in rows2] == [r["score"] for r in rows]


def test_failing_point_does_not_stop_the_sweep(tmp_path, calls):
    path = write_sweep(tmp_path, {"points": [["seed=1"], ["seed=13"], ["seed=2"]]})
    console = quiet()
    rows = run_sweep(path, console=console)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "unlucky seed" in rows[1]["error"]
    bad = tmp_path / "out" / rows[1]["hash"]
    assert "RuntimeError: unlucky seed" in (bad / "error.txt").read_text()
    assert not (bad / "DONE").exists() and (bad / "config.yaml").exists()
    assert "failed" in console.file.getvalue()
    assert "unlucky seed" in (tmp_path / "out" / "summary.md").read_text()
    # a re-run retries only the failed point
    rows2 = run_sweep(path, console=quiet())
    assert len(calls) == 4 and [r["status"] for r in rows2] == ["cached", "failed", "cached"]


def test_duplicates_run_once(tmp_path, calls):
    path = write_sweep(tmp_path, {"grid": {"seed": [1, 1, 2]}, "points": [["max_new_tokens=4"], []]})
    sw = expand_sweep(path)
    assert len(sw.points) == 2 and sw.duplicates == 4
    rows = run_sweep(path, console=quiet())
    assert len(rows) == 2 and len(calls) == 2


def test_dry_run_writes_nothing(tmp_path, calls):
    path = write_sweep(tmp_path, {"grid": {"seed": [1, 2, 3]}})
    rows = run_sweep(path, dry_run=True, console=quiet())
    assert [r["status"] for r in rows] == ["planned"] * 3
    assert not calls and not (tmp_path / "out").exists()


def test_default_out_dir(tmp_path, calls, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_sweep(tmp_path, {"grid": {"seed": [1]}}, name="mysweep.yaml")
    spec = yaml.safe_load(path.read_text())
    del spec["out_dir"]
    path.write_text(yaml.safe_dump(spec))
    assert expand_sweep(path).out_dir == Path("runs/sweeps/mysweep")
    rows = run_sweep(path, console=quiet())
    assert (tmp_path / "runs" / "sweeps" / "mysweep" / rows[0]["hash"] / "DONE").exists()


def test_bad_grid_key(tmp_path, calls):
    path = write_sweep(tmp_path, {"grid": {"sampling.temprature": [0.1, 0.2]}})
    with pytest.raises(ConfigError) as e:
        expand_sweep(path)
    msg = str(e.value)
    assert "sampling.temprature" in msg and "did you mean 'temperature'" in msg
    with pytest.raises(ConfigError, match="sampling.temprature"):
        run_sweep(path, console=quiet())
    assert not calls


def test_bad_sweep_files(tmp_path, calls, monkeypatch):
    monkeypatch.setattr(sweep_mod, "_RUN_MODULES", ())  # keep the real run modules out of it
    with pytest.raises(ConfigError, match=r"unknown sweep key 'gird' \(did you mean 'grid'\?\)"):
        expand_sweep(write_sweep(tmp_path, {"gird": {"seed": [1]}}))
    with pytest.raises(ConfigError, match="unknown run kind 'toy-tset'.*did you mean 'toy-test'"):
        expand_sweep(write_sweep(tmp_path, {"run": "toy-tset"}))
    with pytest.raises(ConfigError, match="base config 'nope.yaml' not found"):
        expand_sweep(write_sweep(tmp_path, {"base": "nope.yaml"}))
    with pytest.raises(ConfigError, match="malformed override"):
        expand_sweep(write_sweep(tmp_path, {"points": [["seed"]]}))
    with pytest.raises(ConfigError, match="bad value for 'seed'"):
        expand_sweep(write_sweep(tmp_path, {"grid": {"seed": ["x"]}}))


def test_run_modules_import(tmp_path, monkeypatch):
    # a missing run module is skipped
    monkeypatch.setattr(sweep_mod, "_RUN_MODULES", ("puyu_nonexistent_run_module",))
    sweep_mod.load_run_modules()
    # a run module whose own import fails is an error
    (tmp_path / "puyu_broken_run_module.py").write_text("import puyu_nonexistent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sweep_mod, "_RUN_MODULES", ("puyu_broken_run_module",))
    with pytest.raises(ModuleNotFoundError, match="puyu_nonexistent_dependency"):
        sweep_mod.load_run_modules()
    sys.modules.pop("puyu_broken_run_module", None)
