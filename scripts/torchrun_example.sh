#!/bin/bash
# Multi-GPU / multi-node DDP with torchrun (no SLURM). Run the same command on every node.
#
#   On both nodes (HOST = address of one of them, reachable from all):
#       RDZV_ID=sbir-001 HOST=10.0.0.1 scripts/torchrun_example.sh
#   One node, 4 GPUs:   RDZV_ID=sbir-002 NNODES=1 scripts/torchrun_example.sh
#   Extra arguments are config overrides: scripts/torchrun_example.sh trainer.max_epochs=30 data.batch_size=32
#
# - torchrun starts NPROC (= GPUs per node) processes per node and sets RANK / LOCAL_RANK / WORLD_SIZE /
#   MASTER_ADDR / MASTER_PORT; Lightning's TorchElastic environment picks them up. trainer.devices must equal
#   --nproc_per_node and trainer.num_nodes must equal --nnodes.
# - Launch the module (`-m sketchquant.app.cli`), not strategy=ddp's own re-launch: under torchrun Lightning
#   does not spawn processes itself.
# - The rendezvous id (--rdzv_id, exported as TORCHELASTIC_RUN_ID) names the run folder:
#   `<run_dir>/<experiment>/torchelastic<RDZV_ID>[-<name>]`, the same in every process, and only global
#   rank 0 writes into it. Use a fresh id per training, the same on all nodes (required below). Without
#   an id torchrun reports "none" and each process falls back to a time stamp (still only rank 0 writes).
# - With the c10d rendezvous, node ranks are assigned by the rendezvous (no --node_rank needed).
# - data.batch_size is PER DEVICE: the global batch is batch_size × nproc_per_node × nnodes.
set -euo pipefail

NNODES=${NNODES:-2}
NPROC=${NPROC:-4}                                   # GPUs per node
HOST=${HOST:-localhost}                             # address of node 0, reachable from all nodes
PORT=${PORT:-29500}
RDZV_ID=${RDZV_ID:?set RDZV_ID to the same value on every node, e.g. RDZV_ID=sbir-$(date +%Y%m%d-%H%M)}
EXP=${EXP:-zs_sbir_sketchy}
DATA_ROOT=${DATA_ROOT:-/data/Sketchy}

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export WANDB_MODE=${WANDB_MODE:-offline}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

exec .venv/bin/torchrun \
    --nnodes="$NNODES" \
    --nproc_per_node="$NPROC" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$HOST:$PORT" \
    --rdzv_id="$RDZV_ID" \
    -m sketchquant.app.cli train "$EXP" \
    data.root="$DATA_ROOT" \
    trainer=ddp \
    trainer.devices="$NPROC" \
    trainer.num_nodes="$NNODES" \
    "$@"
