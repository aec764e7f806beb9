#!/usr/bin/env bash
# Run on every host of a Cloud TPU pod slice (JAX detects the TPU topology by itself):
#   gcloud compute tpus tpu-vm ssh NAME --worker=all --command \
#     "cd puyu-jax && launch/tpu_pod.sh configs/pretrain/llama2-7b-pod.yaml parallel.preset=zero3 parallel.fsdp=-1 parallel.data=1"
# Check first, on any machine (no TPU needed), that the step compiles and fits the slice:
#   puyu aot train --topology v5p:4x4x4 configs/pretrain/llama2-7b-pod.yaml parallel.preset=zero3 parallel.fsdp=-1 parallel.data=1
# (docs/aot.md).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
config="$1"; shift
# TPU_WORKER_HOSTNAMES is set on pod slices; puyu then calls jax.distributed.initialize().
exec "$here/.venv/bin/puyu" train "$config" "$@" --resume
