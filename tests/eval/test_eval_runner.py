"""`puyu eval`: partitioned tasks, local worker processes, --reuse, the content-hash cache across
runs, outputs (predictions / results / summary tables and charts) and SLURM scripts (dry run)."""

import json
from pathlib import Path

import yaml

from puyu_jax.config import load_config
from puyu_jax.eval import EvalConfig, run_eval
from puyu_jax.cli import main


def _config(tmp_path, url) -> Path:
    cfg = {"models": [{"abbr": "srv", "type": "openai", "url": url, "model": "smollm2", "batch_size": 4}],
           "datasets": ["arc-e", "piqa"], "dataset_overrides": ["max_samples=6"], "shard_size": 3,
           "out_dir": str(tmp_path / "out")}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_parallel_workers_reuse_and_cache(tmp_path, openai_server):
    url, app = openai_server
    cfg = load_config(EvalConfig, _config(tmp_path, url))
    n0 = len(app.state.requests)
    out = run_eval(cfg, jobs=2, progress=False)
    work = Path(out["work_dir"])
    assert len(app.state.requests) > n0
    assert sorted(p.name for p in (work / "predictions" / "srv").iterdir()) == [
        "ARC-e_0.json", "ARC-e_1.json", "PIQA_0.json", "PIQA_1.json"]
    res = json.loads((work / "results" / "srv" / "ARC-e.json").read_text())
    assert res["num_samples"] == 6 and len(res["details"]) == 6 and res["group"] == "学科"
    assert set(out["results"]["srv"]) == {"ARC-e", "PIQA"}
    summary = (work / "summary" / "summary.md").read_text()
    assert "ARC-e" in summary and "学科 average" in summary and "srv" in summary
    assert (work / "summary" / "summary.csv").exists() and (work / "summary" / "summary.html").exists()
    assert (work / "summary" / "Examination.png").stat().st_size > 1000
    assert (work / "summary" / "Reasoning.png").exists()
    assert (work / "configs" / "config.yaml").exists()

    # --reuse: every task is finished, nothing is asked again and the scores are the same
    n1 = len(app.state.requests)
    again = run_eval(cfg, reuse=True, jobs=1, progress=False)
    assert again["work_dir"] == out["work_dir"] and again["results"] == out["results"]
    assert len(app.state.requests) == n1
    # a fresh run directory still answers every sample from the content-hash cache
    (work / "predictions" / "srv" / "PIQA_1.json").unlink()
    fresh = run_eval(cfg, reuse=False, jobs=1, progress=False)
    assert fresh["results"] == out["results"] and len(app.state.requests) == n1


def test_cli_dry_runs_local_and_slurm(tmp_path, capsys):
    path = _config(tmp_path, "http://127.0.0.1:9/v1")
    assert main(["eval", str(path), "--dry-run", "-j", "2"]) == 0
    cmds = capsys.readouterr().out.strip().splitlines()
    assert len(cmds) == 4 and all("-m puyu_jax.eval.task" in c for c in cmds)
    assert main(["eval", str(path), "models=[{abbr: m, path: smollm2, devices: 2}]", "slurm.partition=gpu",
                 "--runner", "slurm", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.count("#!/bin/bash") == 4 and "#SBATCH --gres=gpu:2" in text and "#SBATCH --partition=gpu" in text
    assert "#SBATCH --job-name=puyu-eval-m__ARC-e_0" in text and "python" in text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.json"))
    assert main(["eval", str(path), "shard_sise=3", "--dry-run"]) == 2
    assert "did you mean 'shard_size'" in capsys.readouterr().err
