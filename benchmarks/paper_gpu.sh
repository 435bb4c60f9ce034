#!/usr/bin/env bash
# The paper-gpu suite (docs/comparison.md) on one CUDA GPU, in invocations that each end within LIMIT seconds
# (default 540: under a 10-minute command limit). Every run checkpoints every 300 steps and compare skips
# finished runs, so repeating this script with the same RUNS directory resumes the suite exactly where the
# last invocation stopped; it prints "0 to run" when the suite is complete.
#
#   benchmarks/paper_gpu.sh DATA_DIR [RUNS] [WORKERS]
#     DATA_DIR  WikiText-2 folder with valid.txt (trained on) and test.txt (held out)
#     RUNS      results directory (default runs/paper-gpu; keep it between invocations)
#     WORKERS   runs at once on the one GPU (default 6)
#
# If $OUT is set (a folder that is copied back), RESULTS.md, results.json/csv and the plots are copied there.
# SUITE=paper-gpu-tiny DEVICE=cpu checks the script itself on a CPU in seconds.
set -uo pipefail
DATA_DIR=${1:?usage: benchmarks/paper_gpu.sh DATA_DIR [RUNS] [WORKERS]}
RUNS=${2:-runs/paper-gpu}
WORKERS=${3:-6}
LIMIT=${LIMIT:-540}
SUITE=${SUITE:-paper-gpu}
DEVICE=${DEVICE:-cuda}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
timeout "$LIMIT" "$PYTHON" -m plprune.cli compare --suite "$SUITE" --device "$DEVICE" --workers "$WORKERS" \
    --data-dir "$DATA_DIR" --out "$RUNS"
status=$?
[ "$status" -eq 2 ] && exit 2  # a refused command (no GPU, bad arguments): its message is above
"$PYTHON" -m plprune.cli report "$RUNS" > /dev/null  # the report of what has finished so far
if [ -n "${OUT:-}" ]; then
    cp "$RUNS"/RESULTS.md "$RUNS"/results.json "$RUNS"/results.csv "$OUT"/ 2>/dev/null
    cp "$RUNS"/*.png "$OUT"/ 2>/dev/null
fi
[ "$status" -eq 124 ] && echo "stopped at the ${LIMIT}s limit: run the same command again to resume"
exit 0
