#!/usr/bin/env bash
# Per-node launcher: `srun` runs this once on every node of the job (--ntasks-per-node=1); it
# builds the torchrun command from the SLURM variables and runs it, forwarding SIGUSR1/SIGTERM.
#
#   srun --ntasks-per-node=1 bash launch/slurm/torchrun_from_slurm.sh --stage 1 [pretrain.py args]
#
# Arguments are passed to launch/pretrain.py after the ones built here. Read from the environment:
#   SLURM_NNODES, SLURM_JOB_NODELIST, SLURM_JOB_ID, SLURM_NODEID   set by SLURM
#   GPUS_PER_NODE   processes per node (default: SLURM_GPUS_ON_NODE, else 8)
#   MASTER_PORT     rendezvous port on the first node (default 29500)
#   CKPT_DIR        checkpoint directory, passed as both --save and --load (required): a job
#                   resumes from CKPT_DIR/latest; while it holds none (the first job) the run
#                   starts from checkpoint.init_from or from scratch (aria_train.checkpoint)
#   LOG_DIR         this job's log directory: metrics, exit_status, torchrun's per-rank logs (required)
#   ARIA_ROOT       the repository (default: two levels above this script)
#   ARIA_PRINT_ONLY=1   print the torchrun command instead of running it (tests, debugging)
#
# Signals. SLURM's early warning (`#SBATCH --signal=USR1@120`) reaches this script; torchrun does
# not handle SIGUSR1 (its default action would kill it), so torchrun runs with SIGUSR1 ignored and
# this script forwards SIGUSR1 to the worker processes (torchrun's children, which run in their
# own sessions). Each worker's StopController catches it; the ranks agree, save a checkpoint at the
# end of the current step and exit 0, so torchrun and this script exit 0.
# SIGTERM (time limit, scancel) goes to torchrun, which forwards it to the workers and waits
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds for them to save before killing them; its exit code is
# then non-zero even when the workers saved. This script only keeps waiting on SIGTERM, so SLURM
# does not tear the step down under a checkpoint being written.
set -euo pipefail

ARIA_ROOT=${ARIA_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
: "${SLURM_NNODES:?not inside a SLURM allocation (SLURM_NNODES unset)}"
: "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST unset}"
: "${SLURM_JOB_ID:?SLURM_JOB_ID unset}"
: "${CKPT_DIR:?set CKPT_DIR, the checkpoint directory (used for --save and --load)}"
: "${LOG_DIR:?set LOG_DIR, the log directory of this job}"
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
MASTER_PORT=${MASTER_PORT:-29500}
NODE_ID=${SLURM_NODEID:-0}
# The c10d rendezvous store runs on the first node of the allocation.
mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
MASTER_ADDR=${hosts[0]:?cannot expand SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-60}

cmd=(
    torchrun
    --nnodes="$SLURM_NNODES"
    --nproc-per-node="$GPUS_PER_NODE"
    --rdzv-backend=c10d
    --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"
    --rdzv-id="$SLURM_JOB_ID"
    --max-restarts=0
    --log-dir="$LOG_DIR/torchrun/node$NODE_ID"
    --tee=3
    "$ARIA_ROOT/launch/pretrain.py"
    --save "$CKPT_DIR"
    --load "$CKPT_DIR"
    --log-dir "$LOG_DIR"
    "$@"
)

if [[ "${ARIA_PRINT_ONLY:-0}" == 1 ]]; then
    echo "${cmd[*]}"
    exit 0
fi

mkdir -p "$LOG_DIR/torchrun/node$NODE_ID"
# The job's working directory (sbatch's submit directory) stays the run's: relative paths in the
# config (data cache, default run directories) resolve there, not inside the checkout.
# Ignored signals stay ignored across exec: torchrun survives SIGUSR1; the workers replace the
# disposition with their own handler when training starts.
( trap '' USR1; exec "${cmd[@]}" ) &
torchrun_pid=$!

forward_to_workers() {
    local workers
    workers=$(pgrep -P "$torchrun_pid" || true)
    echo "torchrun_from_slurm: node $NODE_ID got SIG$1, forwarding to workers:" $workers >&2
    [[ -n "$workers" ]] && kill "-$1" $workers 2>/dev/null || true
}
trap 'forward_to_workers USR1' USR1
trap 'echo "torchrun_from_slurm: node $NODE_ID got SIGTERM; torchrun forwards it" >&2' TERM

# `wait` returns early (status > 128) when a trapped signal arrives; keep waiting until torchrun
# is really gone, then return its exit status.
while true; do
    set +e
    wait "$torchrun_pid"
    status=$?
    set -e
    kill -0 "$torchrun_pid" 2>/dev/null || break
done
exit "$status"
