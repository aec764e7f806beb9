"""Multi-host start-up: `jax.distributed.initialize` from the environment.

Order: explicit variables (PUYU_COORDINATOR=host:port, PUYU_NUM_PROCESSES, PUYU_PROCESS_ID,
optional PUYU_LOCAL_DEVICE_IDS), then SLURM (srun with more than one task) and TPU pods,
which JAX detects by itself. A single process does nothing.
"""

from __future__ import annotations

import os

import jax


def maybe_initialize_distributed() -> bool:
    """Initializes the JAX multi-controller runtime when the environment asks for it."""
    env = os.environ
    if env.get("PUYU_COORDINATOR"):
        local = env.get("PUYU_LOCAL_DEVICE_IDS")
        jax.distributed.initialize(
            coordinator_address=env["PUYU_COORDINATOR"],
            num_processes=int(env["PUYU_NUM_PROCESSES"]),
            process_id=int(env["PUYU_PROCESS_ID"]),
            local_device_ids=[int(x) for x in local.split(",")] if local else None,
        )
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 or env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()  # SLURM / TPU auto-detection
        return True
    return False
