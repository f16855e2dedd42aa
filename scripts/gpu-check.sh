#!/usr/bin/env bash
# The GPU check, one command on the GPU machine (H100/H200, driver 580 = CUDA 13.0, Python with
# torch + transformers, no network). Prepare it on the build machine first:
#
#   scripts/prepare-gpu-check.sh          # CUDA binary, CPU reference scores, tokenizer -> dist/
#
# then run it there with dist/ carried, e.g. through the device tool:
#
#   run(command="bash scripts/gpu-check.sh", carry=["dist"], timeout_s=540)
#
# It decompresses the binary, points it at the CUDA 13 runtime libraries of the Python
# environment (torch's nvidia-* wheels: cudart, cublas, cublasLt, curand, nvrtc), and runs
# bench/gpu/gpu_check.py: GPU-vs-CPU parity on the fixtures and skyscore vs transformers on
# Llama-shaped checkpoints. Results: $OUT/gpu-check.json and $OUT/gpu-check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-/tmp/gpu-check-out}" WORK="${WORK:-/tmp/gpu-check}"
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/gpu-check.log") 2>&1

export BIN="$WORK/skyscore"
archive=$(ls dist/skyscore-cuda-sm*.xz | head -1)
python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
  "$archive" "$BIN" && chmod +x "$BIN" || { echo "gpu-check: cannot unpack $archive"; exit 1; }

cuda_libs=$(python3 - <<'PYEOF'
import glob, os, site
dirs = set()
for root in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(root, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PYEOF
)
# The driver's libcuda.so.1 is normally on the loader's path already; /usr/local/nvidia is where
# container images mount it. The binary needs glibc >= 2.35.
export LD_LIBRARY_PATH="$cuda_libs:/usr/local/cuda/lib64:/usr/local/nvidia/lib64:/usr/local/nvidia/lib:${LD_LIBRARY_PATH:-}"
echo "gpu-check: $archive; libraries it needs:"
ldd "$BIN" | grep -E 'cuda|cublas|curand|nvrtc|not found'
"$BIN" --version
PYTHONUNBUFFERED=1 python3 bench/gpu/gpu_check.py
