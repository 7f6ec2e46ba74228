#!/usr/bin/env bash
# ARIA's four-stage curriculum in one command: language (1) -> multimodal (2) -> long context (3)
# -> post-training (4). Each stage is a run of its own, runs/<curriculum>/stage1 ... stage4, and
# starts from the previous stage's run (checkpoint.init_from: its latest checkpoint, weights only,
# fresh optimizer), so the stages chain by themselves and a second curriculum never touches the
# first one's checkpoints.
#
#   bash launch/curriculum.sh                     # tiny preset, 2 CPU processes
#   CURRICULUM=trial NPROC=8 bash launch/curriculum.sh --model aria-25b
#
# CURRICULUM names the group of runs (default curriculum-<YYYYmmdd-HHMMSS>). Extra arguments go
# to every stage (e.g. --train-iters 20 --set data.synthetic_samples=500). Stages run under
# launch/run.py (torchrun; a failure's root cause is the last line); the first failure stops here.
set -euo pipefail
NPROC="${NPROC:-2}"
CURRICULUM="${CURRICULUM:-curriculum-$(date +%Y%m%d-%H%M%S)}"
here="$(cd "$(dirname "$0")" && pwd)"
echo "curriculum ${CURRICULUM}: runs/${CURRICULUM}/stage1 ... stage4"
for stage in 1 2 3 4; do
  echo "=== curriculum: stage ${stage} (run ${CURRICULUM}/stage${stage}) ==="
  start=()
  if (( stage > 1 )); then
    start=(--set "checkpoint.init_from=runs/${CURRICULUM}/stage$((stage - 1))")
  fi
  python "${here}/run.py" --standalone --nproc_per_node="${NPROC}" "${here}/pretrain.py" --stage "${stage}" \
    --run-name "${CURRICULUM}/stage${stage}" "${start[@]}" "$@"
done
