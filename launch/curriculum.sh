#!/usr/bin/env bash
# ARIA's four-stage curriculum in one command: language (1) -> multimodal (2) -> long context (3)
# -> post-training (4). Each stage's config names the previous stage's final checkpoint as its
# start (checkpoint.init_from: weights only, fresh optimizer), so the stages chain by themselves.
#
#   bash launch/curriculum.sh                     # tiny preset, 2 CPU processes, ~5 minutes
#   NPROC=8 bash launch/curriculum.sh --model aria-25b
#
# Extra arguments go to every stage (e.g. --train-iters 20 --set data.synthetic_samples=500).
set -euo pipefail
NPROC="${NPROC:-2}"
here="$(cd "$(dirname "$0")" && pwd)"
for stage in 1 2 3 4; do
  echo "=== curriculum: stage ${stage} ==="
  torchrun --standalone --nproc_per_node="${NPROC}" "${here}/pretrain.py" --stage "${stage}" "$@"
done
