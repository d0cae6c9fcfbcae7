#!/usr/bin/env bash
# The chapter-6 table's unfinished runs on a GPU loan: `scripts/chapter6.py table --device
# gpu` goes on from the checkpoints parked in docs/runs/chapter6/unfinished/ (published runs
# are never trained again), until TABLE_SECONDS (default 480); SIGTERM then parks what is
# unfinished. What it wrote comes back through OUT_DIR (default $OUT, else .) as
# chapter6-results.tgz (records, histories, probabilities, CHAPTER6.md, the figures) and one
# chapter6-unfinished-NAME.npz per parked checkpoint: unpack the first and copy the others
# into docs/runs/chapter6/unfinished/NAME.npz here, then commit.
#
# Prepare as for gpu_session.sh (wheels in .whl, MNIST in .gpudata), carry both, and run
#   bash benchmarks/gpu_table.sh [ROWS]      # default: every row (the finished ones are skipped)
# (TABLE_DEVICE=cpu rehearses it on a CPU.)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT_DIR:-${OUT:-.}}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/convnet-site .whl/*.whl
export PYTHONPATH="/tmp/convnet-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
rows=${1:+--rows $1}
# shellcheck disable=SC2086  # $rows is two words or none
timeout --signal=TERM --kill-after=60 "${TABLE_SECONDS:-480}" \
    python3 scripts/chapter6.py table --device "${TABLE_DEVICE:-gpu}" --data "$PWD/.gpudata" $rows \
    2>&1 | tee "$out/chapter6_table_gpu.log"
python3 scripts/chapter6.py park --data "$PWD/.gpudata"
tar czf "$out/chapter6-results.tgz" --exclude='unfinished' docs/CHAPTER6.md docs/runs/chapter6 \
    docs/img/chapter6-curves.png $(ls docs/img/chapter6-ensemble-errors.png 2>/dev/null)
for parked in docs/runs/chapter6/unfinished/*.npz; do
    [ -e "$parked" ] && cp "$parked" "$out/chapter6-unfinished-$(basename "$parked")"
done
ls -la "$out"
