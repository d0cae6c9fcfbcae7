#!/usr/bin/env bash
# Every CPU number in benchmarks/RESULTS.md, in one command (about 30 minutes on 2 cores):
#   bash benchmarks/run_all.sh
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset here only (they halve OpenBLAS speed on
# these machines); tests and CI keep them.
set -euo pipefail
cd "$(dirname "$0")/.."
run() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/"$@" 2> >(grep -v '^W1' >&2); }
run bench.py --repeats 3
run bench.py --nets C --mbs 64 --repeats 3 --peers torch,jax
run bench.py --nets C --mbs 256 --repeats 3 --peers torch,jax
run resources.py
