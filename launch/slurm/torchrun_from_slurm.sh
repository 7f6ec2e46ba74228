#!/usr/bin/env bash
# Per-node launcher: `srun` runs this once on every node of the job (--ntasks-per-node=1); it
# builds the torchrun command from the SLURM variables and runs it through launch/run.py
# (torchrun with the root cause of a failure as the last line), forwarding SIGUSR1/SIGTERM.
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
#   ARIA_PRINT_ONLY=1   print the launch command instead of running it (tests, debugging)
#
# Signals. SLURM's early warning (`#SBATCH --signal=USR1@120`) and SIGTERM (time limit, scancel)
# reach this script (and, depending on the cluster, every process of the step). The script
# forwards both to launch/run.py, which forwards them to the worker processes (torchrun's
# children, which run in their own sessions); plain torchrun would die of SIGUSR1 and exit 1
# after a SIGTERM. Each worker's StopController catches the signal; the ranks agree, save a
# checkpoint at the end of the current step and exit 0, so launch/run.py and this script exit 0.
# A signal that reaches a process twice (directly and forwarded) is harmless. SLURM sends SIGKILL
# KillWait seconds after SIGTERM (cluster setting, often 30 s): the save must fit in it.
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
    python "$ARIA_ROOT/launch/run.py"
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
# Ignored signals stay ignored across exec: SIGUSR1 cannot kill the launcher before it installs
# its own handler (the first thing it does).
( trap '' USR1; exec "${cmd[@]}" ) &
launcher_pid=$!

forward_to_launcher() {
    echo "torchrun_from_slurm: node $NODE_ID got SIG$1, forwarding it to launch/run.py (pid $launcher_pid)" >&2
    kill "-$1" "$launcher_pid" 2>/dev/null || true
}
trap 'forward_to_launcher USR1' USR1
trap 'forward_to_launcher TERM' TERM

# `wait` returns early (status > 128) when a trapped signal arrives; keep waiting until the
# launcher is really gone, then return its exit status.
while true; do
    set +e
    wait "$launcher_pid"
    status=$?
    set -e
    kill -0 "$launcher_pid" 2>/dev/null || break
done
exit "$status"
