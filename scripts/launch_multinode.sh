#!/usr/bin/env bash
# Train one run on several nodes with the DeepSpeed launcher and a hostfile (run it on node 0).
# The hostfile lists one node per line with its GPU count, e.g.
#   gpu-node-1 slots=8
#   gpu-node-2 slots=8
# Nodes reach each other over passwordless ssh, share the repository path and the run directory.
#   HOSTFILE=hosts.txt scripts/launch_multinode.sh --sweep sweeps/li2020.yaml --run-id w768-d24-s0 \
#       --out /shared/runs/li2020/w768-d24-s0
# Every argument goes to `tlc train`.
set -euo pipefail
HOSTFILE="${HOSTFILE:?set HOSTFILE to a DeepSpeed hostfile (lines of: hostname slots=N)}"
if [ ! -r "$HOSTFILE" ]; then
  echo "launch_multinode.sh: cannot read HOSTFILE=$HOSTFILE" >&2
  exit 2
fi
NUM_NODES="${NUM_NODES:-$(grep -cvE '^\s*(#|$)' "$HOSTFILE")}"
exec deepspeed --hostfile "$HOSTFILE" --num_nodes "$NUM_NODES" --master_addr "${MASTER_ADDR:-$(hostname -I | awk '{print $1}')}" \
  --master_port "${MASTER_PORT:-29500}" --module tlc train "$@"
