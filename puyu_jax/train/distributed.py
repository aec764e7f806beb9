"""Multi-host start-up: `jax.distributed.initialize` from the environment.

Order: explicit variables (PUYU_COORDINATOR=host:port, PUYU_NUM_PROCESSES, PUYU_PROCESS_ID,
optional PUYU_LOCAL_DEVICE_IDS), then a SLURM step launched by `srun` with more than one task,
and TPU pods of more than one host, which JAX detects by itself. A single process does nothing.

Only a launcher's own variables count: a lone `TPU_WORKER_HOSTNAMES=localhost` (set by libtpu
users on a non-TPU host to quiet its start-up) or `SLURM_NTASKS` outside an `srun` step is a
single process, not a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax

from puyu_jax.config import ConfigError


def _hosts(value: str) -> list[str]:
    return [h for h in value.split(",") if h.strip()]


def cluster_launcher(env: Mapping[str, str]) -> str | None:
    """Which multi-process launcher started this process ("puyu", "slurm", "tpu"), or None."""
    if env.get("PUYU_COORDINATOR"):
        return "puyu"
    try:
        ntasks = int(env.get("SLURM_NTASKS", "1"))
    except ValueError:
        ntasks = 1
    if ntasks > 1 and "SLURM_JOB_ID" in env and "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        return "slurm"
    if len(_hosts(env.get("TPU_WORKER_HOSTNAMES", ""))) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # private API moved: assume not started
        return False


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Initializes the JAX multi-controller runtime when a launcher asks for it.

    Returns True when this process joined a multi-process run. Raises ConfigError (one line) when
    the variables are incomplete or JAX was already started in this process (initialize must come
    before any JAX computation)."""
    env = os.environ if env is None else env
    launcher = cluster_launcher(env)
    if launcher is None:
        return False
    if jax.distributed.is_initialized():
        return True
    if _backend_started():
        raise ConfigError(f"multi-process run ({launcher}) asked for after JAX had started in this process; "
                          "start training from a fresh process (puyu train / puyu finetune)")
    try:
        if launcher == "puyu":
            missing = [k for k in ("PUYU_NUM_PROCESSES", "PUYU_PROCESS_ID") if not env.get(k)]
            if missing:
                raise ConfigError(f"PUYU_COORDINATOR is set but {', '.join(missing)} is not")
            local = env.get("PUYU_LOCAL_DEVICE_IDS")
            jax.distributed.initialize(
                coordinator_address=env["PUYU_COORDINATOR"],
                num_processes=int(env["PUYU_NUM_PROCESSES"]),
                process_id=int(env["PUYU_PROCESS_ID"]),
                local_device_ids=[int(x) for x in local.split(",")] if local else None,
            )
        else:
            jax.distributed.initialize()  # SLURM / TPU auto-detection
    except ConfigError:
        raise
    except (ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"multi-process start-up ({launcher}) failed: {first}") from e
    return True
