# Sourced by build-cuda.sh and check-cuda.sh: installs CUDA 13.0 from PyPI wheels into
# $cuda_home (once; reinstalled when the pinned wheels change) and exports what a build needs
# (CUDA_HOME, PATH, LIBRARY_PATH with a stub libcuda, LD_LIBRARY_PATH). Expects $cuda_home.

# The CUDA 13.0 pieces candle's CUDA backend needs to build and link. Versions are pinned one by one:
# nvcc's own requirements (crt, nvvm) are unpinned on PyPI and would pull a newer release.
wheels=(
  nvidia-cuda-nvcc==13.0.88     # nvcc, ptxas, fatbinary
  nvidia-cuda-crt==13.0.88      # nvcc's crt headers
  nvidia-nvvm==13.0.88          # cicc, libdevice
  nvidia-cuda-cccl==13.0.85     # cub/thrust/libcu++ headers
  nvidia-cuda-runtime==13.0.96  # cuda.h, cuda_runtime.h, libcudart
  nvidia-cublas==13.1.0.3       # libcublas, libcublasLt
  nvidia-curand==10.4.0.35      # libcurand (CUDA 13.0's)
  nvidia-cuda-nvrtc==13.0.88    # libnvrtc
)

install_toolkit() {
  local staging="$cuda_home.staging"
  rm -rf "$staging" && mkdir -p "$staging/wheels"
  echo "build-cuda: downloading CUDA 13.0 wheels from PyPI into $staging"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$staging/wheels" "${wheels[@]}"
  for wheel in "$staging"/wheels/*.whl; do
    python3 -m zipfile -e "$wheel" "$staging/unpacked"
  done
  local root="$staging/unpacked/nvidia/cu13"
  chmod +x "$root"/bin/* "$root"/nvvm/bin/* 2>/dev/null || true
  # The linker looks for unversioned names (-lcublas ...); wheels ship only the versioned ones.
  for lib in "$root"/lib/lib*.so.*; do
    local base="${lib##*/}"
    ln -sf "$base" "$root/lib/${base%%.so.*}.so"
  done
  # Link stub for the driver library: every cu* name cuda.h declares or aliases (cuMemAlloc ->
  # cuMemAlloc_v2 ...), with the driver's soname so the binary asks for libcuda.so.1 at run time.
  # Like NVIDIA's own stubs, each returns CUDA_ERROR_STUB_LIBRARY (34) if it is ever loaded.
  mkdir -p "$root/lib/stubs"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$root/include/cuda.h" | sort -u \
    | awk '{ print "int " $1 "(void) { return 34; }" }' >"$staging/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$staging/libcuda_stub.c"
  rm -rf "$cuda_home" && mkdir -p "$(dirname "$cuda_home")"
  mv "$root" "$cuda_home"
  printf '%s\n' "${wheels[@]}" >"$cuda_home/WHEELS"
  rm -rf "$staging"
}

wanted="$(printf '%s\n' "${wheels[@]}")"
if [[ ! -f "$cuda_home/WHEELS" || "$(cat "$cuda_home/WHEELS")" != "$wanted" ]]; then
  install_toolkit
fi

export CUDA_HOME="$cuda_home"
export PATH="$cuda_home/bin:$PATH"
export LIBRARY_PATH="$cuda_home/lib:$cuda_home/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
# Lets the linker find what the CUDA libraries themselves need (libcublas -> libcublasLt).
export LD_LIBRARY_PATH="$cuda_home/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
