#!/usr/bin/env bash
# Side by side on one machine: skyscore vs the Python reference (transformers, batches of 16,
# input order and length-sorted) on the same model and rows. Prints and records tokens/s.
#
#   bench/cpu_bench.sh [SKYSCORE_BINARY] [PYTHON]
#
# With BF16=1 (the default), also bf16 on both sides: skyscore --dtype bf16 (its AVX512-BF16
# kernel where the CPU has it) against transformers bf16, length-sorted; scores compared with
# transformers f32 (results/cpu-<model>-bf16.json). BF16=0 skips it.
#
# Needs the Python environment of tests/reference/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-/var/tmp/skyscore-target-release/release/skyscore}"
PY="${2:-/var/tmp/skyscore-py/venv/bin/python}"
WORK=/var/tmp/skyscore-bench
ROWS="${ROWS:-128}"
mkdir -p "$WORK" bench/results
# Results are kept per CPU class: the kernels differ between them.
if grep -qw avx512_bf16 /proc/cpuinfo; then CPU_CLASS=avx512bf16
elif grep -qw avx512f /proc/cpuinfo; then CPU_CLASS=avx512
elif grep -qw avx2 /proc/cpuinfo; then CPU_CLASS=avx2
else CPU_CLASS=other; fi
CPU_NAME=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
# What was measured: the commit (with "+changes" when the tree differs from it) and the versions on the Python side.
COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench/results' || echo +changes)"
VERSIONS=$("$PY" -c 'from importlib.metadata import version as v; print("transformers " + v("transformers") + ", torch " + v("torch"))')
export CPU_CLASS CPU_NAME COMMIT VERSIONS
QWEN_ROWS="${QWEN_ROWS:-32}"
[ -f "$WORK/llama-bench/config.json" ] || "$PY" bench/make_bench_model.py --out "$WORK/llama-bench"
# The Qwen3-0.6B shape needs the real Qwen3 tokenizer (../shared/tokenizers/qwen3); MODELS=... skips it.
if [ -z "${MODELS:-}" ] && [ ! -f "$WORK/qwen3-0.6b-shape/config.json" ] && [ -d ../shared/tokenizers/qwen3 ]; then
  "$PY" bench/make_qwen3_shape.py --out "$WORK/qwen3-0.6b-shape"
fi
head -n "$ROWS" sample_data/sft_sample.jsonl > "$WORK/rows.jsonl"
head -n "$QWEN_ROWS" sample_data/sft_sample.jsonl > "$WORK/rows-qwen.jsonl"
DEFAULT_MODELS="sample_data/models/tiny-llama $WORK/llama-bench"
[ -f "$WORK/qwen3-0.6b-shape/config.json" ] && DEFAULT_MODELS="$DEFAULT_MODELS $WORK/qwen3-0.6b-shape"

run() { # name, command... (the model's files read once first: both sides load from the page cache)
  local name=$1; shift
  cat "$model"/*.safetensors > /dev/null
  local t0=$(date +%s.%N)
  "$@" 2> "$WORK/$name.err" >/dev/null
  local t1=$(date +%s.%N)
  echo "$name $(echo "$t1 - $t0" | bc)"
}

for model in ${MODELS:-$DEFAULT_MODELS}; do
  tag=$(basename "$model")
  rows="$WORK/rows.jsonl"
  [ "$tag" = qwen3-0.6b-shape ] && rows="$WORK/rows-qwen.jsonl"
  echo "== $tag, $(wc -l < "$rows") rows, $(nproc) cores"
  run "skyscore-$tag" "$BIN" score --model "$model" --input "$rows" --output "$WORK/sky-$tag.jsonl" \
    --stats-json "$WORK/sky-$tag.stats.json" --no-progress --no-store
  run "python-input-order-$tag" "$PY" tests/reference/reference_score.py --model "$model" \
    --input "$rows" --output "$WORK/py-$tag.jsonl"
  run "python-sorted-$tag" "$PY" tests/reference/reference_score.py --model "$model" \
    --input "$rows" --output "$WORK/pys-$tag.jsonl" --sort-by-length
  "$PY" - "$WORK" "$tag" <<'PYEOF'
import json, sys
work, tag = sys.argv[1], sys.argv[2]
sky = json.load(open(f"{work}/sky-{tag}.stats.json"))
py = json.loads(open(f"{work}/python-input-order-{tag}.err").read().strip().splitlines()[-1])
pys = json.loads(open(f"{work}/python-sorted-{tag}.err").read().strip().splitlines()[-1])
a = [json.loads(l)["score"] for l in open(f"{work}/sky-{tag}.jsonl")]
b = [json.loads(l)["score"] for l in open(f"{work}/py-{tag}.jsonl")]
delta = max(abs(x - y) for x, y in zip(a, b))
import os
res = {"model": tag, "cpu_class": os.environ["CPU_CLASS"], "cpu": os.environ["CPU_NAME"], "cores": os.cpu_count(),
       "skyscore_commit": os.environ["COMMIT"], "python_side": os.environ["VERSIONS"], "rows": sky["rows"], "tokens": sky["tokens"],
       "padded_tokens": sky["padded_tokens"], "skyscore_tokens_per_s": round(sky["tokens_per_s"]), "skyscore_wall_s": round(sky["wall_s"], 2),
       "python_input_order_tokens_per_s": round(py["tokens_per_s"]), "python_input_order_wall_s": round(py["wall_s"], 2),
       "python_sorted_tokens_per_s": round(pys["tokens_per_s"]), "python_sorted_wall_s": round(pys["wall_s"], 2),
       "ratio_vs_input_order": round(sky["tokens_per_s"] / py["tokens_per_s"], 2),
       "ratio_vs_sorted": round(sky["tokens_per_s"] / pys["tokens_per_s"], 2),
       "max_abs_delta": delta,
       # Scoring alone (model loading left out on both sides), the measure of issue 12.
       "skyscore_model_s": round(sky["model_s"], 2), "skyscore_load_s": round(sky["load_s"], 2),
       "python_sorted_score_s": round(pys["score_s"], 2),
       "ratio_vs_sorted_scoring_time": round(pys["score_s"] / sky["model_s"], 2)}
print(json.dumps(res, indent=1))
json.dump(res, open(f"bench/results/cpu-{tag}-{os.environ['CPU_CLASS']}.json", "w"), indent=1)
PYEOF
  [ "${BF16:-1}" = 1 ] || continue
  run "skyscore-bf16-$tag" "$BIN" score --model "$model" --input "$rows" --output "$WORK/sky16-$tag.jsonl" \
    --dtype bf16 --stats-json "$WORK/sky16-$tag.stats.json" --no-progress --no-store
  run "python-sorted-bf16-$tag" "$PY" tests/reference/reference_score.py --model "$model" \
    --input "$rows" --output "$WORK/pys16-$tag.jsonl" --sort-by-length --dtype bfloat16
  "$PY" - "$WORK" "$tag" "$(grep -c avx512_bf16 /proc/cpuinfo || true)" <<'PYEOF'
import json, sys
work, tag, has_kernel = sys.argv[1], sys.argv[2], int(sys.argv[3]) > 0
sky32 = json.load(open(f"{work}/sky-{tag}.stats.json"))
sky = json.load(open(f"{work}/sky16-{tag}.stats.json"))
pys = json.loads(open(f"{work}/python-sorted-bf16-{tag}.err").read().strip().splitlines()[-1])
scores = lambda name: {json.dumps(r["id"]): r["score"] for r in map(json.loads, open(f"{work}/{name}.jsonl"))}
f32, sky16, py16 = scores(f"py-{tag}"), scores(f"sky16-{tag}"), scores(f"pys16-{tag}")
import os
res = {"model": tag, "cpu_class": os.environ["CPU_CLASS"], "cpu": os.environ["CPU_NAME"], "cores": os.cpu_count(),
       "skyscore_commit": os.environ["COMMIT"], "python_side": os.environ["VERSIONS"], "rows": sky["rows"], "tokens": sky["tokens"], "cpu_avx512_bf16": has_kernel,
       "skyscore_bf16_tokens_per_s": round(sky["tokens_per_s"]), "skyscore_f32_tokens_per_s": round(sky32["tokens_per_s"]),
       "python_sorted_bf16_tokens_per_s": round(pys["tokens_per_s"]),
       "ratio_vs_python_bf16_sorted": round(sky["tokens_per_s"] / pys["tokens_per_s"], 2),
       "skyscore_bf16_vs_f32": round(sky["tokens_per_s"] / sky32["tokens_per_s"], 2),
       "max_abs_delta_skyscore_bf16_vs_transformers_f32": max(abs(sky16[k] - f32[k]) for k in f32),
       "max_abs_delta_transformers_bf16_vs_f32": max(abs(py16[k] - f32[k]) for k in f32),
       # Scoring alone (model loading left out on both sides), the measure of issue 12.
       "skyscore_bf16_model_s": round(sky["model_s"], 2), "skyscore_bf16_load_s": round(sky["load_s"], 2),
       "python_sorted_bf16_score_s": round(pys["score_s"], 2),
       "python_sorted_bf16_load_s": round(pys["wall_s"] - pys["score_s"], 2),
       "ratio_vs_python_bf16_sorted_scoring_time": round(pys["score_s"] / sky["model_s"], 2)}
print(json.dumps(res, indent=1))
json.dump(res, open(f"bench/results/cpu-{tag}-bf16-{os.environ['CPU_CLASS']}.json", "w"), indent=1)
PYEOF
done
