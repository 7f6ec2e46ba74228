#!/usr/bin/env bash
# The body every stageN.sbatch template shares; the template sets the variables and sources this.
#
#   1. one `srun` task per node runs torchrun_from_slurm.sh (rendezvous, signal forwarding);
#   2. every job of a run saves to and resumes from the same CKPT_DIR; its logs go to
#      RUN_DIR/logs/<job id>/ (metrics.jsonl, exit_status, torchrun's per-rank logs);
#   3. job chaining: rank 0 writes LOG_DIR/exit_status ("<reason> <step>") when training stops.
#      reason is finished | signal | exit-duration | exit-interval | nonfinite | error.
#      Only "signal" (SLURM's --signal=USR1@... early warning before the time limit) and
#      "exit-duration" (train.exit_duration_mins) mean "stopped early, more to do": then the next
#      job is submitted with --dependency=afterany:$SLURM_JOB_ID, so it starts when this one has
#      ended and resumes from CKPT_DIR/latest. A finished run, a failure (no or another status)
#      and MAX_CHAIN reached all end the chain. scancel and a hard time limit kill this shell
#      too (SIGTERM), so they never chain.
#
# Variables (set by the template): STAGE RUN_DIR CKPT_DIR GPUS_PER_NODE MASTER_PORT MAX_CHAIN
# TRAIN_ARGS (array) INIT_FROM (optional: a previous stage's checkpoint for the first job; empty
# keeps the stage config's checkpoint.init_from).
set -euo pipefail

ARIA_ROOT=${ARIA_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
CHAIN_INDEX=${ARIA_CHAIN_INDEX:-0}
[[ "$RUN_DIR" == /* ]] || RUN_DIR=$PWD/$RUN_DIR
[[ "$CKPT_DIR" == /* ]] || CKPT_DIR=$PWD/$CKPT_DIR
[[ -z "${INIT_FROM:-}" || "$INIT_FROM" == /* ]] || INIT_FROM=$PWD/$INIT_FROM
LOG_DIR=$RUN_DIR/logs/$SLURM_JOB_ID
# The template as submitted (inside a job $0 is SLURM's temporary copy of it).
SBATCH_SCRIPT=${ARIA_SBATCH_SCRIPT:-$(scontrol show job "$SLURM_JOB_ID" -o | sed -n 's/.* Command=\([^ ]*\).*/\1/p')}
SBATCH_SCRIPT=${SBATCH_SCRIPT:-$0}
mkdir -p "$LOG_DIR" "$CKPT_DIR"
export ARIA_ROOT CKPT_DIR LOG_DIR GPUS_PER_NODE MASTER_PORT

args=(--stage "$STAGE" "${TRAIN_ARGS[@]}")
if [[ -n "${INIT_FROM:-}" ]]; then
    # Used only while CKPT_DIR holds no checkpoint (the first job of a stage): the previous
    # stage's weights, fresh optimizer, step 0. Later jobs resume CKPT_DIR/latest.
    args+=(--set "checkpoint.init_from=$INIT_FROM")
fi

echo "job $SLURM_JOB_ID (chain $CHAIN_INDEX/$MAX_CHAIN): stage $STAGE on $SLURM_NNODES nodes x $GPUS_PER_NODE," \
     "checkpoints $CKPT_DIR, logs $LOG_DIR"
set +e
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
    bash "$ARIA_ROOT/launch/slurm/torchrun_from_slurm.sh" "${args[@]}"
status=$?
set -e

reason=missing step=?
if [[ -f "$LOG_DIR/exit_status" ]]; then
    read -r reason step < "$LOG_DIR/exit_status" || true
fi
echo "job $SLURM_JOB_ID: srun exit $status, training stopped at step $step: $reason"
case "$reason" in
    signal | exit-duration)
        if (( CHAIN_INDEX + 1 < MAX_CHAIN )); then
            sbatch --dependency="afterany:$SLURM_JOB_ID" \
                --export="ALL,ARIA_CHAIN_INDEX=$((CHAIN_INDEX + 1)),ARIA_ROOT=$ARIA_ROOT" \
                "$SBATCH_SCRIPT"
            echo "job $SLURM_JOB_ID: submitted the next job of the chain"
        else
            echo "job $SLURM_JOB_ID: MAX_CHAIN=$MAX_CHAIN jobs reached, not resubmitting"
        fi
        ;;
esac
exit "$status"
