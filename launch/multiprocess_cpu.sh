#!/usr/bin/env bash
# N JAX processes on this machine (127.0.0.1), each with D CPU devices: a multi-host run in
# miniature, through jax.distributed. Extra arguments go to `puyu`.
#   NPROC=2 DEVICES=4 launch/multiprocess_cpu.sh train configs/pretrain/tiny-shakespeare.yaml parallel.preset=zero3 parallel.fsdp=8
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
nproc="${NPROC:-2}"
devices="${DEVICES:-4}"
port="${PORT:-$((20000 + RANDOM % 20000))}"
pids=()
for ((i = 0; i < nproc; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" \
  PUYU_COORDINATOR="127.0.0.1:${port}" PUYU_NUM_PROCESSES="${nproc}" PUYU_PROCESS_ID="${i}" \
    "$here/.venv/bin/puyu" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
