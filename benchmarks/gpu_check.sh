#!/usr/bin/env bash
# convnet on an NVIDIA GPU: one step checked against the CPU, compile times, net C timed
# against PyTorch CUDA at mini-batch 10 and 256, the card's identity. Under 6 minutes;
# installs nothing from the network: pytensor and its pure-Python dependencies come as
# wheels in WHEEL_DIR (default .whl), everything else (CUDA JAX, PyTorch, numpy, scipy) from
# the machine. Further arguments go to gpu_check.py (e.g. --references jax,c).
#
#   bash benchmarks/gpu_check.sh [WHEEL_DIR [ARGS...]]
#
# Wheels for the GPU machine's Python (3.12 here), made on any machine with pip:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       "pytensor==3.0.7" cons etuples logical-unification miniKanren
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=${1:-.whl}
shift || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/convnet-site "$wheels"/*.whl
export PYTHONPATH="/tmp/convnet-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
PYTHONUNBUFFERED=1 timeout "${CHECK_SECONDS:-300}" python3 benchmarks/gpu_check.py "$@"
