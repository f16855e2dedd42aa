#!/usr/bin/env bash
# skyscore on a Ballista cluster on this machine: one executor vs two, each pinned to its own
# core (taskset), one task at a time, scoring COPIES × 320 distinct rows (default 8: 2,560 rows
# as 32 Parquet files) with the llama-bench model; and the same query run locally by
# `skyscore sql` on one core and on both, for scale. Wall time = the client's whole query
# (planning, scheduling, model loading on each executor included).
#
#   bench/cluster_bench.sh [SKYSCORE_BINARY] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-/var/tmp/skyscore-target-release/release/skyscore}"
PY="${2:-/var/tmp/skyscore-py/venv/bin/python}"
WORK=/var/tmp/skyscore-bench/cluster
COPIES="${COPIES:-8}"
mkdir -p "$WORK" bench/results
[ -f /var/tmp/skyscore-bench/llama-bench/config.json ] ||
  "$PY" bench/make_bench_model.py --out /var/tmp/skyscore-bench/llama-bench
MODEL=/var/tmp/skyscore-bench/llama-bench
TABLE="$WORK/table-$COPIES"
QUERY="SELECT count(*) AS n, sum(skywork_score(instruction, input, output)) AS total FROM sft"

# The table: COPIES distinct copies of the sample, 4 files each.
if [ ! -d "$TABLE" ]; then
  mkdir -p "$TABLE"
  for copy in $(seq 0 $((COPIES - 1))); do
    for part in 0 1 2 3; do
      "$BIN" sql --no-store -t sft=sample_data/sft_sample.parquet \
        "COPY (SELECT id + $copy * 1000 AS id, concat(instruction, ' (copy $copy)') AS instruction, input, output
               FROM sft WHERE id % 4 = $part) TO '$TABLE/part-$copy-$part.parquet'" >/dev/null
    done
  done
fi

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; pids=(); }
trap cleanup EXIT
now() { date +%s.%N; }

# cluster RUN CORES...: a scheduler, one executor per core given, the query from the client.
cluster() {
  local run=$1; shift
  "$BIN" cluster scheduler --bind 127.0.0.1:0 >"$WORK/$run-scheduler.out" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do grep -q listening "$WORK/$run-scheduler.out" && break; sleep 0.1; done
  local address; address=$(awk '{print $NF}' "$WORK/$run-scheduler.out")
  local i=0
  for core in "$@"; do
    rm -f "$WORK/$run-e$i.json"
    RUST_LOG=warn,ballista_executor=info taskset -c "$core" "$BIN" cluster executor --scheduler "$address" \
      --bind "127.0.0.1:$((52100 + 10 * i))" --grpc-port $((52101 + 10 * i)) --concurrent-tasks 1 \
      --model "$MODEL" --no-store --stats-json "$WORK/$run-e$i.json" 2>"$WORK/$run-e$i.log" &
    pids+=($!)
    for _ in $(seq 300); do grep -q "registration succeed" "$WORK/$run-e$i.log" && break; sleep 0.1; done
    i=$((i + 1))
  done
  local t0; t0=$(now)
  "$BIN" sql --cluster "df://$address" --model "$MODEL" -t "sft=$TABLE" --format csv "$QUERY" >"$WORK/$run.csv"
  echo "$(now) - $t0" | bc >"$WORK/$run.wall"
  cleanup
  sleep 1
}

# local RUN CORES: the same query by `skyscore sql` here, pinned to CORES.
local_run() {
  local run=$1 cores=$2 t0
  t0=$(now)
  taskset -c "$cores" "$BIN" sql --no-store --model "$MODEL" -t "sft=$TABLE" --format csv --no-progress \
    --stats-json "$WORK/$run-e0.json" "$QUERY" >"$WORK/$run.csv" 2>/dev/null
  echo "$(now) - $t0" | bc >"$WORK/$run.wall"
}

if [ -z "${SUMMARY_ONLY:-}" ]; then   # SUMMARY_ONLY=1: summarise the last runs again
  local_run local-1core 0
  cluster one-executor 0
  cluster two-executors 0 1
  local_run local-2cores 0,1
fi

"$PY" - "$WORK" "$COPIES" <<'PYEOF'
import glob, json, sys
work, copies = sys.argv[1], int(sys.argv[2])
runs = {}
for run, what in [("local-1core", "skyscore sql, local, 1 core"), ("one-executor", "cluster, 1 executor x 1 core"),
                  ("two-executors", "cluster, 2 executors x 1 core"), ("local-2cores", "skyscore sql, local, 2 cores")]:
    wall = float(open(f"{work}/{run}.wall").read())
    result = open(f"{work}/{run}.csv").read().split("\n")[1]
    stats = [json.load(open(f)) for f in sorted(glob.glob(f"{work}/{run}-e*.json"))]
    tokens = sum(s["tokens"] for s in stats)
    runs[run] = {
        "what": what, "wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall),
        "model_rows_per_executor": [s["model_rows"] for s in stats], "result": result,
    }
# Same rows, same sum of scores (to float summation order: batches and partitions differ).
counts = {r["result"].split(",")[0] for r in runs.values()}
sums = [float(r["result"].split(",")[1]) for r in runs.values()]
assert len(counts) == 1 and max(sums) - min(sums) <= 1e-6 * max(abs(x) for x in sums), runs
res = {
    "model": "llama-bench (22.5M, seeded)", "rows": 320 * copies, "files": 4 * copies, "runs": runs,
    "two_vs_one_executor": round(runs["one-executor"]["wall_s"] / runs["two-executors"]["wall_s"], 2),
    "cluster_1_vs_local_1core": round(runs["local-1core"]["wall_s"] / runs["one-executor"]["wall_s"], 2),
}
print(json.dumps(res, indent=1))
json.dump(res, open("bench/results/cluster.json", "w"), indent=1)
PYEOF
