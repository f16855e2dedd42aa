#!/usr/bin/env bash
# What the Python binding costs: `Scorer.score_table` against `skyscore score` on the same model
# and rows, release builds of both, alternating runs, medians recorded in
# bench/results/python-binding-<cpu class>.json.
#
#   bench/python_bench.sh [SKYSCORE_BINARY]
#
# MODEL (default the 22.5M llama-bench of cpu_bench.sh), ROWS (a Parquet file, default the
# 320-row sample), REPEAT (default 3), VENV (default /var/tmp/skyscore-pyci, as .ci/run makes it).
# The package is installed into VENV with `pip install ./python` (release) from the release target.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-/var/tmp/skyscore-target-release/release/skyscore}"
VENV="${VENV:-/var/tmp/skyscore-pyci}"
MODEL="${MODEL:-/var/tmp/skyscore-bench/llama-bench}"
ROWS="${ROWS:-sample_data/sft_sample.parquet}"
REPEAT="${REPEAT:-3}"
WORK=$(mktemp -d /var/tmp/skyscore-pybench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
if grep -qw avx512_bf16 /proc/cpuinfo; then CPU_CLASS=avx512bf16
elif grep -qw avx512f /proc/cpuinfo; then CPU_CLASS=avx512
elif grep -qw avx2 /proc/cpuinfo; then CPU_CLASS=avx2
else CPU_CLASS=other; fi
[ -f "$MODEL/config.json" ] || { echo "no model at $MODEL (bench/cpu_bench.sh makes llama-bench)"; exit 1; }
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/skyscore-target-release}" PATH="$VENV/bin:$PATH" \
  "$VENV/bin/pip" install -q --no-build-isolation --force-reinstall --no-deps ./python
cat "$MODEL"/*.safetensors > /dev/null

for i in $(seq "$REPEAT"); do
  t0=$(date +%s.%N)
  "$BIN" score --model "$MODEL" --input "$ROWS" --output "$WORK/cli.jsonl" --no-store --no-progress \
    --stats-json "$WORK/cli-$i.json" 2>/dev/null
  echo "{\"process_s\": $(echo "$(date +%s.%N) - $t0" | bc)}" > "$WORK/cli-time-$i.json"
  "$VENV/bin/python" - "$MODEL" "$ROWS" "$WORK/py-$i.json" <<'PYEOF'
import json, sys, time
t0 = time.perf_counter()
import pyarrow.parquet as pq
import skyscore
model, rows, out = sys.argv[1:4]
scorer = skyscore.Scorer(model, store=False)
t1 = time.perf_counter()
table = pq.read_table(rows)
scored = scorer.score_table(table)
t2 = time.perf_counter()
stats = scorer.stats
json.dump({"process_s": t2 - t0, "score_s": t2 - t1, "tokens": stats["tokens"], "rows": scored.num_rows,
           "scores": scored.column("score").to_pylist()}, open(out, "w"))
PYEOF
done

"$VENV/bin/python" - "$WORK" "$REPEAT" "$CPU_CLASS" "$MODEL" "$ROWS" <<'PYEOF'
import json, statistics, subprocess, sys
work, repeat, cpu_class, model, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
cli = [json.load(open(f"{work}/cli-{i}.json")) | json.load(open(f"{work}/cli-time-{i}.json")) for i in range(1, repeat + 1)]
py = [json.load(open(f"{work}/py-{i}.json")) for i in range(1, repeat + 1)]
cli_scores = [json.loads(l)["score"] for l in open(f"{work}/cli.jsonl")]
assert all(p["tokens"] == cli[0]["tokens"] for p in py), "same rows on both sides"
max_delta = max(abs(a - b) for a, b in zip(py[-1]["scores"], cli_scores))
cli_score_tps = statistics.median(c["tokens"] / (c["wall_s"] - c["load_s"]) for c in cli)
py_score_tps = statistics.median(p["tokens"] / p["score_s"] for p in py)
cli_process_tps = statistics.median(c["tokens"] / c["process_s"] for c in cli)
py_process_tps = statistics.median(p["tokens"] / p["process_s"] for p in py)
cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
result = {
    "what": "Scorer.score_table (Python) vs skyscore score (CLI), same model and rows, release builds",
    "cpu": cpu, "cpu_class": cpu_class, "cores": len(open("/proc/cpuinfo").read().split("processor")) - 1,
    "commit": commit, "model": model, "rows": py[0]["rows"], "tokens": py[0]["tokens"], "runs_each": repeat,
    "cli_scoring_tokens_per_s": round(cli_score_tps), "python_scoring_tokens_per_s": round(py_score_tps),
    "python_vs_cli_scoring": round(py_score_tps / cli_score_tps, 3),
    "cli_process_tokens_per_s": round(cli_process_tps), "python_process_tokens_per_s": round(py_process_tps),
    "python_vs_cli_process": round(py_process_tps / cli_process_tps, 3),
    "max_abs_score_delta": max_delta,
    "notes": "scoring: after the model loaded (CLI: wall_s - load_s of --stats-json, which includes reading "
             "and writing files; Python: pq.read_table + score_table). process: the whole process, "
             "interpreter and imports included. max_abs_score_delta: the CLI's JSON Lines print each f32 "
             "in its shortest form; read back as a double it differs from the exact f32 by under one f32 ulp.",
}
json.dump(result, open(f"bench/results/python-binding-{cpu_class}.json", "w"), indent=2)
print(json.dumps(result, indent=2))
PYEOF
