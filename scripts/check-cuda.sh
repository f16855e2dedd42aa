#!/usr/bin/env bash
# Does the CUDA build still compile? `cargo check --features cuda` against CUDA 13.0 from PyPI
# (the toolkit build-cuda.sh uses), without a GPU: run it whenever the engine or the models
# change, so that a GPU run never starts with a build that does not compile. It type-checks the
# whole app with candle's CUDA backend and runs the build scripts (candle's kernels are compiled
# to PTX by nvcc for sm_$CUDA_COMPUTE_CAP), but links nothing.
#
# Usage:   scripts/check-cuda.sh
# Env:     SKYSCORE_CUDA_HOME  the toolkit (default /var/tmp/skyscore-cuda/13.0, shared with build-cuda.sh)
#          CARGO_TARGET_DIR    (default /var/tmp/skyscore-target-cuda-check: check artifacts of their own)
#          CUDA_COMPUTE_CAP    (default 90)
set -euo pipefail
cd "$(dirname "$0")/.."
cuda_home="${SKYSCORE_CUDA_HOME:-/var/tmp/skyscore-cuda/13.0}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/skyscore-target-cuda-check}"
source scripts/cuda-toolkit.sh
nvcc --version | tail -1
started=$(date +%s)
cargo check --locked --features cuda --bin skyscore
echo "check-cuda: the CUDA build compiles ($(git rev-parse --short HEAD), sm_$CUDA_COMPUTE_CAP, $(( $(date +%s) - started )) s)"
