"""Partition and run: (model, dataset, shard) inference tasks, then scoring, then the summary.

    <out_dir>/<timestamp>/            one run (`--reuse` picks the latest, or a named one)
        configs/config.{yaml,hash}    the EvalConfig
        tasks/*.json                  one spec per inference task (what a worker process reads)
        predictions/<model>/<dataset>[_<shard>].json
        results/<model>/<dataset>.json
        summary/summary.{md,csv,html}, summary/<capability>.png
        logs/, slurm/
    <out_dir>/cache/<model>/*.jsonl   per-sample predictions by content hash (shared by runs)

Runners: `local` runs tasks in this process (one model load per model) with `jobs=1`, or as
`python -m puyu_jax.eval.task SPEC` worker processes, `jobs` at a time, each pinned to one
device group (CUDA_VISIBLE_DEVICES) when there are GPUs; `slurm` submits one sbatch script
per task (`sbatch --wait`, `jobs` in flight) and `dry_run` prints the scripts instead.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from puyu_jax.config import REPO_ROOT, save_run_config, to_dict
from puyu_jax.eval.config import DatasetConfig, EvalConfig, ModelSpec, load_dataset_config


@dataclass(frozen=True)
class Task:
    """One inference task: a shard of a dataset on a model."""

    model: ModelSpec
    dataset: DatasetConfig
    shard: int
    shards: int

    @property
    def name(self) -> str:
        base = f"{self.model.abbr}/{self.dataset.label}"
        return base if self.shards == 1 else f"{base}_{self.shard}"

    def predictions_path(self, work: Path) -> Path:
        return work / "predictions" / f"{self.name}.json"


def dataset_configs(cfg: EvalConfig) -> list[DatasetConfig]:
    return [load_dataset_config(d, cfg.dataset_overrides, cfg.data_root) for d in cfg.datasets]


def plan(cfg: EvalConfig) -> list[Task]:
    """Every (model, dataset, shard) of the run, datasets split into `shard_size` rows.

    Every dataset is read and its first rows rendered under each model's meta template here,
    before any model loads: a bad file, line, column or template field stops the run at once
    (a one-line DatasetError)."""
    from puyu_jax.eval.backends.checks import check_gold_answerable
    from puyu_jax.eval.core import num_shards
    from puyu_jax.eval.datasets import validate_dataset

    tasks = []
    models = cfg.model_specs
    for d in dataset_configs(cfg):
        if any(m.type == "gold" for m in models):
            check_gold_answerable(d)
        for meta in sorted({m.meta for m in models}):
            ds = validate_dataset(d, meta)
        n = num_shards(len(ds.test), cfg.shard_size)
        for m in models:
            tasks += [Task(m, d, i, n) for i in range(n)]
    return tasks


def work_dir(cfg: EvalConfig, reuse: bool | str = False) -> Path:
    """A new timestamped run directory, or with `reuse` the latest (True) or named one."""
    root = Path(cfg.out_dir)
    if reuse:
        if isinstance(reuse, str):
            return root / reuse
        runs = sorted(p for p in root.glob("*") if p.is_dir() and p.name != "cache") if root.is_dir() else []
        if runs:
            return runs[-1]
    base = root / time.strftime("%Y%m%d_%H%M%S")
    work, k = base, 0
    while work.exists():  # two runs within a second
        k += 1
        work = base.with_name(f"{base.name}_{k}")
    return work


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)  # never a half-written file for --reuse to trust


def task_spec(task: Task, work: Path, cache_root: Path) -> dict:
    return {"model": to_dict(task.model), "dataset": to_dict(task.dataset), "shard": task.shard,
            "shards": task.shards, "predictions": str(task.predictions_path(work)),
            "cache": str(cache_root / task.model.abbr), "name": task.name}


def run_task(spec: dict, backend=None, progress: bool = True) -> Path:
    """Runs one inference task from its spec and writes its predictions file."""
    from puyu_jax.config import from_dict
    from puyu_jax.eval.backends import make_backend
    from puyu_jax.eval.cache import PredictionCache
    from puyu_jax.eval.core import predict

    model = from_dict(ModelSpec, spec["model"])
    dataset = from_dict(DatasetConfig, spec["dataset"])
    backend = backend if backend is not None else make_backend(model, dataset)
    cache = PredictionCache(spec["cache"], writer=spec["name"].replace("/", "__") + f".{os.getpid()}")
    preds = predict(backend, dataset, shard=spec["shard"], shards=spec["shards"], cache=cache, meta=model.meta,
                    progress=progress)
    out = Path(spec["predictions"])
    _write_json(out, preds)
    return out


def _gpu_count() -> int:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([x for x in env.split(",") if x.strip()])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def worker_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "puyu_jax.eval.task", str(spec_path)]


def slurm_script(task: Task, spec_path: Path, work: Path, cfg: EvalConfig) -> str:
    """The sbatch script of one task."""
    s = cfg.slurm
    safe = task.name.replace("/", "__")
    lines = ["#!/bin/bash", f"#SBATCH --job-name=puyu-eval-{safe}", f"#SBATCH --output={work / 'logs' / safe}.out",
             f"#SBATCH --cpus-per-task={s.cpus_per_task}", f"#SBATCH --time={s.time}", "#SBATCH --ntasks=1"]
    if task.model.type == "local" and s.gpus_per_task:
        lines.append(f"#SBATCH --gres=gpu:{max(s.gpus_per_task, task.model.devices)}")
    if s.partition:
        lines.append(f"#SBATCH --partition={s.partition}")
    lines += [f"#SBATCH {x}" for x in s.extra]
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(REPO_ROOT))}", "export XLA_PYTHON_CLIENT_PREALLOCATE=false",
              shlex.join(worker_command(spec_path))]
    return "\n".join(lines) + "\n"


def _run_local(tasks, specs, work: Path, jobs: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    if jobs <= 1:
        backends: dict[str, object] = {}
        from puyu_jax.eval.backends import make_backend

        for task, (spec, _) in zip(tasks, specs):
            key = json.dumps(to_dict(task.model), sort_keys=True)
            if task.model.type == "gold":  # it knows one dataset's answers
                key += task.dataset.name
            if key not in backends:
                backends.clear()  # one model in memory at a time
                backends[key] = make_backend(task.model, task.dataset)
            run_task(spec, backends[key], progress)
        return
    gpus = _gpu_count()
    per = max(t.model.devices for t in tasks)
    groups = [",".join(str(g) for g in range(i * per, (i + 1) * per)) for i in range(gpus // per)] if gpus else []
    slots = min(jobs, len(groups)) if groups else jobs
    free = list(range(slots))
    import threading

    lock = threading.Lock()
    bar = tqdm(total=len(tasks), desc="tasks", disable=not progress)

    def one(item):
        task, (spec, spec_path) = item
        with lock:
            slot = free.pop()
        env = dict(os.environ)
        if groups:
            env["CUDA_VISIBLE_DEVICES"] = groups[slot]
        log = work / "logs" / (task.name.replace("/", "__") + ".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(log, "w") as f:
                code = subprocess.run(worker_command(spec_path), env=env, stdout=f, stderr=subprocess.STDOUT,
                                      cwd=REPO_ROOT).returncode
        finally:
            with lock:
                free.append(slot)
            bar.update(1)
        if code != 0:
            raise RuntimeError(f"task {task.name} failed (exit {code}); see {log}")

    with ThreadPoolExecutor(slots) as pool:
        list(pool.map(one, zip(tasks, specs)))
    bar.close()


def _run_slurm(tasks, specs, work: Path, cfg: EvalConfig, jobs: int, dry_run: bool) -> list[str]:
    scripts = []
    for task, (_, spec_path) in zip(tasks, specs):
        path = work / "slurm" / (task.name.replace("/", "__") + ".sh")
        path.parent.mkdir(parents=True, exist_ok=True)
        text = slurm_script(task, spec_path, work, cfg)
        path.write_text(text)
        scripts.append((path, text))
    if dry_run:
        return [text for _, text in scripts]

    def submit(item):
        path, _ = item
        r = subprocess.run([cfg.slurm.sbatch, "--wait", str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"sbatch {path} failed ({r.returncode}): {r.stderr.strip()}")

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(submit, scripts))
    return []


def run_eval(cfg: EvalConfig, *, reuse: bool | str = False, runner: str = "local", jobs: int = 1,
             dry_run: bool = False, progress: bool = True, judge=None, echo=print) -> dict:
    """Runs an EvalConfig: infer (skipping tasks whose predictions exist under `reuse`), score,
    summarize. Returns {"work_dir", "results": {model: {dataset: score}}, "summary": paths}
    (with `dry_run`: {"work_dir", "commands"|"scripts"} and nothing run)."""
    from puyu_jax.eval.cache import PredictionCache
    from puyu_jax.eval.core import score
    from puyu_jax.eval.datasets import load_dataset
    from puyu_jax.eval.summary import write_summary

    if runner not in ("local", "slurm"):
        raise ValueError(f"runner={runner!r}: expected local or slurm")
    work = work_dir(cfg, reuse)
    cache_root = Path(cfg.out_dir) / "cache"
    tasks = plan(cfg)
    todo = [t for t in tasks if not (reuse and t.predictions_path(work).exists())]
    specs = []
    for t in todo:
        spec = task_spec(t, work, cache_root)
        spec_path = work / "tasks" / (t.name.replace("/", "__") + ".json")
        if not dry_run:
            _write_json(spec_path, spec)
        specs.append((spec, spec_path.resolve() if spec_path.exists() else spec_path))
    if dry_run:
        if runner == "slurm":
            scripts = _run_slurm(todo, specs, work, cfg, jobs, True)
            for s in scripts:
                echo(s)
            return {"work_dir": str(work), "scripts": scripts}
        cmds = [shlex.join(worker_command(p)) for _, p in specs]
        for c in cmds:
            echo(c)
        return {"work_dir": str(work), "commands": cmds}
    save_run_config(cfg, work / "configs")
    if todo:
        if runner == "slurm":
            _run_slurm(todo, specs, work, cfg, jobs, False)
        else:
            _run_local(todo, specs, work, jobs, progress)
    results: dict[str, dict[str, dict]] = {}
    judge_cache = PredictionCache(cache_root / "judge", writer=f"judge.{os.getpid()}")
    for d in dataset_configs(cfg):
        ds = load_dataset(d)
        for m in cfg.model_specs:
            out = work / "results" / m.abbr / f"{d.label}.json"
            if reuse and out.exists() and not any(t.model == m and t.dataset == d for t in todo):
                res = json.loads(out.read_text(encoding="utf-8"))
            else:
                preds = []
                for t in tasks:
                    if t.model == m and t.dataset == d:
                        preds += json.loads(t.predictions_path(work).read_text(encoding="utf-8"))
                res = score(ds, preds, judge=judge, cache=judge_cache)
                res["model"] = m.abbr
                _write_json(out, res)
            results.setdefault(m.abbr, {})[d.label] = res
    paths = write_summary(results, work / "summary", groups=cfg.summary_groups)
    return {"work_dir": str(work), "results": {m: {d: r["score"] for d, r in v.items()} for m, v in results.items()},
            "summary": paths}
