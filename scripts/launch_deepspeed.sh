#!/usr/bin/env bash
# Train one run on all GPUs of this node with the DeepSpeed launcher.
#   scripts/launch_deepspeed.sh --sweep sweeps/small.yaml --run-id w768-d12-s0
#   NUM_GPUS=4 scripts/launch_deepspeed.sh --width 512 --depth 6 --heads 8 --tokens 1e9
# Every argument goes to `tlc train`.
set -euo pipefail
NUM_GPUS="${NUM_GPUS:-$(python -c 'import torch; print(torch.cuda.device_count())')}"
if [ "$NUM_GPUS" -lt 1 ]; then
  echo "launch_deepspeed.sh: no GPU found; use scripts/launch_torchrun.sh for CPU processes" >&2
  exit 2
fi
exec deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29500}" --module tlc train "$@"
