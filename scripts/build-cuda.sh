#!/usr/bin/env bash
# Builds skyscore's CUDA binary on a machine with no GPU and no CUDA install, then strips and
# compresses it so it can be carried to a GPU machine.
#
# - CUDA comes from PyPI wheels only, pinned to 13.0.x: the GPU machines run driver 580 (CUDA 13.0),
#   which cannot load PTX from a newer nvcc.
# - No wheel carries the driver's libcuda.so; we link against a stub that exports the driver API's
#   names (made from cuda.h). At run time the real libcuda.so.1 of the driver is used.
# - Kernels are built for one compute capability, sm_90 (H100/H200) unless CUDA_COMPUTE_CAP says
#   otherwise (cudaforge would otherwise ask nvidia-smi, which a build machine does not have).
#
# Usage:   scripts/build-cuda.sh [OUTPUT_DIR]          (default: dist)
# Output:  OUTPUT_DIR/skyscore-cuda-sm${CUDA_COMPUTE_CAP}.xz   (xz -d, chmod +x; needs the CUDA 13
#          runtime libraries on LD_LIBRARY_PATH there: cudart, cublas, cublasLt, curand, nvrtc)
# Env:     SKYSCORE_CUDA_HOME  where the toolkit is unpacked (default /var/tmp/skyscore-cuda/13.0)
#          CARGO_TARGET_DIR    (default /var/tmp/skyscore-target-release, shared with release builds)
#          CUDA_COMPUTE_CAP    (default 90)
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${1:-dist}"
cuda_home="${SKYSCORE_CUDA_HOME:-/var/tmp/skyscore-cuda/13.0}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/skyscore-target-release}"

# CUDA 13.0 from PyPI, and the environment that builds against it.
source scripts/cuda-toolkit.sh
nvcc --version | tail -2
echo "build-cuda: cargo build --release --features cuda (sm_$CUDA_COMPUTE_CAP, target dir $CARGO_TARGET_DIR)"
cargo build --release --locked --features cuda --bin skyscore

mkdir -p "$out_dir"
name="skyscore-cuda-sm$CUDA_COMPUTE_CAP"
strip -o "$out_dir/$name" "$CARGO_TARGET_DIR/release/skyscore"
rm -f "$out_dir/$name.xz"
xz -T0 -9 "$out_dir/$name"
echo "build-cuda: $out_dir/$name.xz ($(du -h "$out_dir/$name.xz" | cut -f1)); needs at run time:"
xz -dc "$out_dir/$name.xz" >"$out_dir/.probe" && readelf -d "$out_dir/.probe" | grep NEEDED | sed 's/^/  /'
rm -f "$out_dir/.probe"
