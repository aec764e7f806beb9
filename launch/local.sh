#!/usr/bin/env bash
# Run a puyu command on this machine. On a CPU-only host, PUYU_CPU_DEVICES=N splits the
# CPU into N XLA devices so that sharded configs can be tried out locally:
#   PUYU_CPU_DEVICES=8 launch/local.sh model info tiny
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -n "${PUYU_CPU_DEVICES:-}" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${PUYU_CPU_DEVICES}"
fi
exec "$here/.venv/bin/puyu" "$@"
