#!/usr/bin/env bash
# Everything the GPU numbers in benchmarks/RESULTS.md need, as one command for a short GPU
# loan: gpu_check.sh (step check, compile, net C vs PyTorch CUDA at mini-batch 10 and 256),
# 5 dropout nets trained as one program against one after another (ensemble_program.py),
# then the book's net C trained on the GPU on real MNIST as a user would (60 epochs, the
# book's 99.23%), cut when the session reaches SESSION_SECONDS (default 450); then the cold
# compile with full float32 products and the device-dependent test files on the GPU (up to
# TEST_SECONDS, default 150). About 8 minutes in all. Logs go to OUT_DIR (default $OUT, else .).
#
# Prepare on a machine with pip and MNIST (both folders are git-ignored via .git/info/exclude):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       "pytensor==3.0.7" cons etuples logical-unification miniKanren
#   mkdir -p .gpudata && cp ../shared/data/mnist/* .gpudata/
# then run `bash benchmarks/gpu_session.sh` there, carrying .whl and .gpudata.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT_DIR:-${OUT:-.}}
export PYTHONUNBUFFERED=1
deadline=$((SECONDS + ${SESSION_SECONDS:-450}))
python3 --version
bash benchmarks/gpu_check.sh .whl 2>&1 | tee "$out/gpu_check.log"
export PYTHONPATH="/tmp/convnet-site:$PWD"
# Issue 15's ensemble target: 5 dropout nets as one program against 5 runs one after another.
CONVNET_DATA="$PWD/.gpudata" timeout 200 python3 benchmarks/ensemble_program.py --device gpu \
    --members 5 --images 5000 --repeats 2 2>&1 | tee "$out/ensemble_program_gpu.log"
left=$((deadline - SECONDS))
echo "# book run: $left s left for net C's 60 epochs"
CONVNET_DEVICE=gpu CONVNET_DATA="$PWD/.gpudata" timeout "$((left > 30 ? left : 30))" \
    python3 scripts/chapter6.py relu --seed 0 2>&1 | tee "$out/chapter6_relu_gpu.log"
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader
# Open question from the first GPU runs: does full float32 itself slow the cold compile?
echo "# cold compile with CONVNET_PRECISION=float32 (the default, tf32, is in gpu_check.log)"
CONVNET_PRECISION=float32 timeout 90 python3 benchmarks/gpu_check.py --parts compile 2>&1 \
    | tee "$out/compile_float32.log"
# The device-dependent test files on the GPU (the suite runs them in float32 there).
CONVNET_DEVICE=gpu timeout "${TEST_SECONDS:-150}" python3 -m pytest -q -p no:cacheprovider \
    -m "not mnist" tests/test_backend.py tests/test_native_conv.py tests/test_ops.py \
    tests/test_training.py tests/test_lockstep.py 2>&1 | tee "$out/pytest_gpu.log" | tail -n 15
