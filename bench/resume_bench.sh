#!/usr/bin/env bash
# The score store, measured: its cost on a run with nothing stored yet, the rerun after a
# kill -9 at ~50% of an uninterrupted run, and its size per row.
#
#   bench/resume_bench.sh [SKYSCORE_BINARY] [PYTHON]
#
# Model: the seeded 22.5M-parameter llama-bench of cpu_bench.sh (the forward pass dominates);
# rows: the 320 sample rows. Size: STORE_ROWS (default 200,000) generated rows at max_length 32
# with the tiny model (bench/make_large_table.py).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-/var/tmp/skyscore-target-release/release/skyscore}"
PY="${2:-/var/tmp/skyscore-py/venv/bin/python}"
WORK=/var/tmp/skyscore-bench
STORE_ROWS="${STORE_ROWS:-200000}"
mkdir -p "$WORK" bench/results
[ -f "$WORK/llama-bench/config.json" ] || "$PY" bench/make_bench_model.py --out "$WORK/llama-bench"
MODEL="$WORK/llama-bench"
IN=sample_data/sft_sample.parquet
now() { date +%s.%N; }
run() { "$BIN" score --model "$MODEL" --input "$IN" --no-progress "$@" 2>/dev/null; }

# 1. Uninterrupted, no store; then a fresh store (nothing stored yet): the store's cost.
t0=$(now); run --output "$WORK/r-nostore.jsonl" --no-store --stats-json "$WORK/r-nostore.json"; t1=$(now)
rm -f "$WORK/r-fresh.redb"
run --output "$WORK/r-fresh.jsonl" --store "$WORK/r-fresh.redb" --stats-json "$WORK/r-fresh.json"; t2=$(now)
# 2. Again without a store, to see the run-to-run noise beside the store's cost.
run --output "$WORK/r-nostore2.jsonl" --no-store --stats-json "$WORK/r-nostore2.json"; t3=$(now)

# 3. Kill -9 at ~50% of the uninterrupted wall time, then rerun the same command.
full=$(echo "$t1 - $t0" | bc)
rm -f "$WORK/r-kill.redb" "$WORK/r-kill.jsonl"
"$BIN" score --model "$MODEL" --input "$IN" --output "$WORK/r-kill.jsonl" --store "$WORK/r-kill.redb" \
  --no-progress 2>/dev/null &
pid=$!
sleep "$(echo "$full * 0.5" | bc)"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
t4=$(now); run --output "$WORK/r-kill.jsonl" --store "$WORK/r-kill.redb" --stats-json "$WORK/r-kill.json"; t5=$(now)
identical=$(cmp -s "$WORK/r-kill.jsonl" "$WORK/r-nostore.jsonl" && echo true || echo false)

# 4. Store size: STORE_ROWS distinct rows.
BIG="$WORK/large-$STORE_ROWS.parquet"
[ -f "$BIG" ] || "$PY" bench/make_large_table.py --rows "$STORE_ROWS" --out "$BIG"
rm -f "$WORK/r-size.redb"
"$BIN" score --model sample_data/models/tiny-llama --max-length 32 --input "$BIG" --output "$WORK/r-size.parquet" \
  --store "$WORK/r-size.redb" --no-progress 2>/dev/null

"$PY" - "$WORK" "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" "$STORE_ROWS" "$identical" <<'PYEOF'
import json, os, sys
work, t0, t1, t2, t3, t4, t5, rows = sys.argv[1], *map(float, sys.argv[2:8]), int(sys.argv[8])
identical = sys.argv[9] == "true"
read = lambda n: [(r["id"], r["score"]) for r in map(json.loads, open(f"{work}/{n}.jsonl")) if r]
full, resumed = read("r-nostore"), read("r-kill")
assert [i for i, _ in full] == [i for i, _ in resumed], "same rows in the same order"
max_delta = max(abs(a - b) for (_, a), (_, b) in zip(full, resumed))
load = lambda n: json.load(open(f"{work}/{n}.json"))
nostore, fresh, nostore2, kill = load("r-nostore"), load("r-fresh"), load("r-nostore2"), load("r-kill")
res = {
    "model": "llama-bench (22.5M, seeded)", "rows": nostore["rows"], "tokens": nostore["tokens"],
    "no_store_s": [t1 - t0, t3 - t2], "fresh_store_s": t2 - t1,
    "no_store_tokens_per_s": [nostore["tokens_per_s"], nostore2["tokens_per_s"]],
    "fresh_store_tokens_per_s": fresh["tokens_per_s"],
    "store_cost": 1 - fresh["tokens_per_s"] / (sum([nostore["tokens_per_s"], nostore2["tokens_per_s"]]) / 2),
    "rerun_after_kill_at_50pct_s": t5 - t4, "rerun_model_rows": kill["model_rows"],
    "rerun_store_hits": kill["store_hits"], "rerun_over_full": (t5 - t4) / (t1 - t0),
    "output_byte_identical": identical, "max_abs_delta_vs_uninterrupted": max_delta,
    "store_rows": rows, "store_bytes": os.path.getsize(f"{work}/r-size.redb"),
}
res["store_mb_per_million_rows"] = res["store_bytes"] / rows * 1e6 / 1e6
print(json.dumps(res, indent=2))
json.dump(res, open("bench/results/resume.json", "w"), indent=2)
PYEOF
