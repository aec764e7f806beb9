"""Which environments start a multi-process run: only a launcher's own variables count."""

import pytest

from puyu_jax.config import ConfigError
from puyu_jax.train.distributed import cluster_launcher, maybe_initialize_distributed


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_ACCELERATOR_TYPE": "v5litepod-4"}, None),  # libtpu quieting
    ({"SLURM_NTASKS": "4"}, None),                                     # salloc shell, not an srun step
    ({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0"}, None),
    ({"SLURM_NTASKS": "garbage"}, None),
    ({"SLURM_NTASKS": "4", "SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "2"}, "slurm"),
    ({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}, "tpu"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1:8080"}, "tpu"),
    ({"PUYU_COORDINATOR": "127.0.0.1:1234", "PUYU_NUM_PROCESSES": "2", "PUYU_PROCESS_ID": "0"}, "puyu"),
])
def test_cluster_launcher(env, expected):
    assert cluster_launcher(env) == expected


def test_single_process_does_nothing_even_after_jax_started():
    import jax

    jax.devices()  # the backend is up (as in any test process)
    assert maybe_initialize_distributed({"TPU_WORKER_HOSTNAMES": "localhost"}) is False


def test_a_cluster_asked_for_after_jax_started_is_one_line_error():
    import jax

    jax.devices()
    with pytest.raises(ConfigError, match="after JAX had started"):
        maybe_initialize_distributed({"SLURM_NTASKS": "2", "SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0",
                                      "SLURM_PROCID": "0"})
