#!/usr/bin/env bash
# Train one run on NPROC processes of this machine (GPUs, or CPU processes with gloo) with torchrun.
#   NPROC=8 scripts/launch_torchrun.sh --sweep sweeps/small.yaml --run-id w512-d6-s0
#   NPROC=2 scripts/launch_torchrun.sh --width 64 --depth 2 --heads 2 --tokens 2e6     # CPU
# Several nodes: NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<node 0> MASTER_PORT=29500 on each node.
# Every argument goes to `tlc train`; the global batch is micro_batch x grad_accum x processes.
set -euo pipefail
NPROC="${NPROC:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
NNODES="${NNODES:-1}"
PYTHON="${PYTHON:-python}"
if [ "$NNODES" = 1 ]; then
  rdzv=(--standalone)
else
  rdzv=(--nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK on every node}"
        --master_addr "${MASTER_ADDR:?set MASTER_ADDR to node 0}" --master_port "${MASTER_PORT:-29500}")
fi
# one intra-op thread per process unless told otherwise, so CPU processes do not fight over cores
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PYTHON" -m torch.distributed.run "${rdzv[@]}" --nproc_per_node "$NPROC" -m tlc train "$@"
