#!/usr/bin/env bash
# The issue-15 device suite: CUDA tests + GPU benchmarks, results in OUT/results.json and
# OUT/results.md (about 5 minutes on one H200, limited to 8).
#   bash bench/gpu_suite.sh OUT          # on a GPU machine
#   bash bench/gpu_suite.sh OUT --dry    # anywhere: the plan and an import check, nothing measured
#   bash bench/gpu_suite.sh OUT --smoke  # anywhere: every step at tiny shapes on CPU, nothing measured
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash bench/gpu_suite.sh OUT [--dry | --smoke]" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
exec python bench/gpu_suite.py "$@"
