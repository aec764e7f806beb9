"""Checkpoints: a SIGKILLed run resumes bit-identically; a checkpoint restores onto another mesh."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from puyu_jax.config import load_config
from puyu_jax.train.config import TrainConfig
from puyu_jax.train.loop import train

REPO = Path(__file__).resolve().parents[2]
TINY_RUN = ["model=tiny", "data.seq_len=64", "data.vocab_size=512", "batch_size=8", "steps=40",
            "checkpoint.every=5", "log_every=100", "tensorboard=false", "optimizer.warmup_steps=5"]


def _losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["loss"]  # a resumed run re-logs steps after its checkpoint
    return out


def _cmd(out_dir, *extra):
    return [sys.executable, "-m", "puyu_jax.cli", "train", str(REPO / "configs/pretrain/tiny-shakespeare.yaml"),
            *TINY_RUN, f"out_dir={out_dir}", *extra]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    return env


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    subprocess.run(_cmd(tmp_path / "ref"), check=True, env=_env(), capture_output=True)
    ref = _losses(tmp_path / "ref")
    assert len(ref) == 40 and ref[40] < ref[1] - 0.5  # the loss falls

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 17:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    logged = len((run / "metrics.jsonl").read_text().splitlines())
    assert logged < 40, "the run finished before it could be killed"

    subprocess.run(_cmd(run, "--resume"), check=True, env=_env(), capture_output=True)
    got = _losses(run)
    assert got == ref  # every step's loss, bit for bit


def test_sigterm_saves_and_exits(tmp_path):
    run = tmp_path / "term"
    proc = subprocess.Popen(_cmd(run, "steps=400"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    steps = len(_losses(run))
    assert steps < 400 and "SIGTERM: saved step" in err
    assert (run / "checkpoints" / str(steps)).is_dir()


def test_restore_onto_a_smaller_mesh(tmp_path):
    base = load_config(TrainConfig, REPO / "configs/pretrain/tiny-shakespeare.yaml",
                       TINY_RUN + ["steps=6", "checkpoint.every=3", "checkpoint.async_save=false",
                                   "parallel.preset=zero3", "parallel.data=1", "parallel.fsdp=8"])
    ref = train(load_config(TrainConfig, base, [f"out_dir={tmp_path / 'ref'}"]))
    half = load_config(TrainConfig, base, [f"out_dir={tmp_path / 'r'}", "steps=3"])
    train(half)
    resumed_cfg = load_config(TrainConfig, half, ["steps=6", "parallel.fsdp=4"])
    out = train(resumed_cfg, resume=True, devices=jax.devices()[:4])
    assert out["start_step"] == 3
    a, b = _losses(tmp_path / "ref"), _losses(tmp_path / "r")
    np.testing.assert_allclose([b[s] for s in range(1, 7)], [a[s] for s in range(1, 7)], atol=1e-5)
    assert ref["step"] == out["step"] == 6
