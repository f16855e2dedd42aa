#!/usr/bin/env bash
# Prepares dist/ for scripts/gpu-check.sh, on the build machine (no GPU needed):
#   - the CUDA binary (scripts/build-cuda.sh),
#   - CPU scores of the fixtures (f32 and bf16) from a CPU build, to compare the GPU's with,
#   - a Llama-3 tokenizer (tokenizer.json + tokenizer_config.json with its chat template) for
#     the Llama-shaped checkpoints the check builds there.
#
# Usage: scripts/prepare-gpu-check.sh [LLAMA3_TOKENIZER_DIR]     (default ../shared/tokenizers/llama3)
set -euo pipefail
cd "$(dirname "$0")/.."
tokenizer="${1:-../shared/tokenizers/llama3}"
scripts/build-cuda.sh dist

# The CPU scores come from the test build (numeric crates optimised, same kernels as release).
cpu_target="${SKYSCORE_CPU_TARGET_DIR:-/var/tmp/skyscore-target}"
CARGO_TARGET_DIR="$cpu_target" cargo build --locked --bin skyscore
mkdir -p dist/cpu-scores
for model in tiny-llama tiny-qwen3; do
  for dtype in f32 bf16; do
    "$cpu_target/debug/skyscore" score --model "sample_data/models/$model" \
      --input tests/fixtures/parity_rows.jsonl --output "dist/cpu-scores/$model.$dtype.jsonl" \
      --dtype "$dtype" --no-progress --no-store
  done
done

mkdir -p dist/llama3-tokenizer
cp "$tokenizer/tokenizer.json" "$tokenizer/tokenizer_config.json" dist/llama3-tokenizer/
du -sh dist
echo "prepare-gpu-check: ready; on the GPU machine run: bash scripts/gpu-check.sh (carry dist/)"
