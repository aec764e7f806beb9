"""Multi-host in miniature: 2 processes x 4 CPU devices (jax.distributed on 127.0.0.1) = 1 x 8."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
ARGS = ["train", str(REPO / "configs/pretrain/tiny-shakespeare.yaml"), "model=tiny", "data.seq_len=64",
        "batch_size=8", "steps=4", "checkpoint.every=2", "tensorboard=false", "parallel.preset=zero3",
        "parallel.data=1", "parallel.fsdp=8"]


def _losses(d: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_of_four_devices_equal_one_of_eight(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-m", "puyu_jax.cli", *ARGS, f"out_dir={tmp_path / 'one'}"],
                   check=True, env=env, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(NPROC="2", DEVICES="4", PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    proc = subprocess.run(["bash", str(REPO / "launch/multiprocess_cpu.sh"), *ARGS, f"out_dir={tmp_path / 'two'}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)
    assert (tmp_path / "two" / "checkpoints" / "4").is_dir()
