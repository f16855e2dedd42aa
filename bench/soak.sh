#!/usr/bin/env bash
# A soak with faults. (1) `skyscore score` over ROWS (default 200,000) distinct rows with the
# score store, killed with `kill -9` at KILLS (default 5) random points, then run to the end;
# its output must have every row once, in order, with the scores of an uninterrupted run
# (bit for bit: scores do not depend on batching). (2) A cluster COPY of CLUSTER_ROWS (default
# 20,000) rows with two executors, one of them killed twice (and restarted) while the query
# runs; the output must have every row once with the uninterrupted scores.
# Figures go to bench/results/soak.json.
#
#   bench/soak.sh [SKYSCORE_BINARY] [PYTHON]    (SEED=... to repeat a run's kill points)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-/var/tmp/skyscore-target-release/release/skyscore}"
PY="${2:-/var/tmp/skyscore-pyci/bin/python}"
ROWS="${ROWS:-200000}"
KILLS="${KILLS:-5}"
CLUSTER_ROWS="${CLUSTER_ROWS:-20000}"
SEED="${SEED:-$(date +%s)}"
MODEL=sample_data/models/tiny-llama
WORK=$(mktemp -d /var/tmp/skyscore-soak.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; pids=(); }
trap 'cleanup; rm -rf "$WORK"' EXIT
echo "soak: seed $SEED (SEED=$SEED repeats these kill points), work folder $WORK"
RANDOM=$SEED
now() { date +%s.%N; }
"$PY" bench/make_large_table.py --rows "$ROWS" --out "$WORK/rows.parquet"
score() { "$BIN" score --model "$MODEL" --max-length 64 --input "$WORK/rows.parquet" --no-progress "$@"; }

# 1a. The uninterrupted run, no store: the reference.
t0=$(now); score --output "$WORK/clean.parquet" --no-store 2>/dev/null; t1=$(now)
clean_s=$(echo "$t1 - $t0" | bc)
echo "soak: clean run $clean_s s"

# 1b. The same job with a store, killed KILLS times at random points, then run to the end.
points=()
t2=$(now)
for k in $(seq "$KILLS"); do
  # The binary itself in the background (a function would run in a subshell that kill -9
  # would end, leaving skyscore running).
  "$BIN" score --model "$MODEL" --max-length 64 --input "$WORK/rows.parquet" --no-progress \
    --output "$WORK/soak.parquet" --store "$WORK/store.redb" 2>/dev/null &
  pid=$!
  # A random point in the first 60% of a clean run: later runs start with rows in the store.
  percent=$((RANDOM % 60 + 1))
  point=$(echo "scale=2; $clean_s * $percent / 100" | bc)
  points+=("$point")
  sleep "$point"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if kill -0 "$pid" 2>/dev/null; then echo "soak: process $pid survived kill -9"; exit 1; fi
  echo "soak: kill $k after $point s; store: $("$BIN" store info --store "$WORK/store.redb" | head -1)"
done
score --output "$WORK/soak.parquet" --store "$WORK/store.redb" --stats-json "$WORK/final.json" 2>/dev/null
t3=$(now)
soak_s=$(echo "$t3 - $t2" | bc)

# 2. The cluster: scheduler, two executors (each with its own store), a COPY; executor 1 is
# killed twice while the query runs, and restarted each time.
"$PY" - "$WORK" "$CLUSTER_ROWS" <<'PYEOF'
import sys, pyarrow.parquet as pq
work, n = sys.argv[1], int(sys.argv[2])
table = pq.read_table(f"{work}/rows.parquet").slice(0, n)
import os
os.makedirs(f"{work}/ctable", exist_ok=True)
for part in range(8):
    pq.write_table(table.slice(part * n // 8, n // 8 if part < 7 else n - 7 * (n // 8)), f"{work}/ctable/part-{part}.parquet")
PYEOF
query="COPY (SELECT id, skywork_score(instruction, input, output) AS score FROM sft) TO '$WORK/cluster.parquet'"
"$BIN" sql --no-store --model "$MODEL" --max-length 64 -t "sft=$WORK/ctable" --no-progress \
  "${query/cluster.parquet/cluster-clean.parquet}" >/dev/null 2>&1
"$BIN" cluster scheduler --bind 127.0.0.1:0 --executor-timeout 3 >"$WORK/scheduler.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$WORK/scheduler.out" && break; sleep 0.1; done
address=$(awk '{print $NF}' "$WORK/scheduler.out")
executor() { # N: start executor N (its own ports and store)
  "$BIN" cluster executor --scheduler "$address" --bind "127.0.0.1:$((52300 + 10 * $1))" \
    --grpc-port $((52301 + 10 * $1)) --concurrent-tasks 1 --heartbeat-interval 1 --model "$MODEL" \
    --max-length 64 --store "$WORK/executor-$1.redb" --work-dir "$WORK/work-$1" \
    >"$WORK/executor-$1.out" 2>"$WORK/executor-$1.log" &
  echo $!
}
mkdir -p "$WORK/work-0" "$WORK/work-1"
e0=$(executor 0); pids+=("$e0")
e1=$(executor 1); pids+=("$e1")
sleep 2
t4=$(now)
"$BIN" sql --cluster "df://$address" --model "$MODEL" --max-length 64 -t "sft=$WORK/ctable" "$query" \
  >"$WORK/cluster.out" 2>"$WORK/cluster.err" &
client=$!
cluster_kills=()
for k in 1 2; do
  tenths=$((RANDOM % 30 + 10))
  point=$(echo "scale=1; $tenths / 10" | bc)
  sleep "$point"
  kill -9 "$e1" 2>/dev/null || true
  cluster_kills+=("$point")
  echo "soak: cluster: executor 1 killed ($k) $point s after the previous event"
  sleep 1
  e1=$(executor 1); pids+=("$e1")
done
cluster_ok=true
wait "$client" || cluster_ok=false
t5=$(now)
cluster_s=$(echo "$t5 - $t4" | bc)
cleanup

"$PY" - "$WORK" "$SEED" "$ROWS" "$clean_s" "$soak_s" "${points[*]}" "$cluster_ok" "$cluster_s" \
  "${cluster_kills[*]}" "$CLUSTER_ROWS" "$BIN" <<'PYEOF'
import json, subprocess, sys
import pyarrow.parquet as pq
work, seed, rows, clean_s, soak_s, points, cluster_ok, cluster_s, cluster_kills, cluster_rows, binary = sys.argv[1:12]
clean, soak = pq.read_table(f"{work}/clean.parquet"), pq.read_table(f"{work}/soak.parquet")
assert soak.num_rows == clean.num_rows == int(rows), (soak.num_rows, clean.num_rows)
assert soak.column("id").to_pylist() == clean.column("id").to_pylist(), "every row once, in input order"
differ = sum(a != b for a, b in zip(soak.column("score").to_pylist(), clean.column("score").to_pylist()))
assert differ == 0, f"{differ} scores differ from the uninterrupted run"
final = json.load(open(f"{work}/final.json"))
assert cluster_ok == "true", open(f"{work}/cluster.err").read()[-2000:]
cc, cl = pq.read_table(f"{work}/cluster-clean.parquet"), pq.read_table(f"{work}/cluster.parquet")
clean_by_id = dict(zip(cc.column("id").to_pylist(), cc.column("score").to_pylist()))
ids = cl.column("id").to_pylist()
assert len(ids) == len(set(ids)) == int(cluster_rows), (len(ids), len(set(ids)))
cluster_differ = sum(clean_by_id[i] != s for i, s in zip(ids, cl.column("score").to_pylist()))
assert cluster_differ == 0, f"{cluster_differ} cluster scores differ"
cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
flags = open("/proc/cpuinfo").read()
cpu_class = "avx512bf16" if "avx512_bf16" in flags else "avx512" if "avx512f" in flags else "avx2"
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
result = {
    "what": "kill -9 soak: score with the store killed at random points then run to the end; a cluster COPY "
            "with one of two executors killed twice",
    "cpu": cpu, "cpu_class": cpu_class, "commit": commit, "binary": binary, "seed": int(seed),
    "model": "tiny-llama, max_length 64",
    "score": {
        "rows": int(rows), "kills": len(points.split()), "kill_points_s": [float(p) for p in points.split()],
        "clean_run_s": round(float(clean_s), 2), "soak_s_all_runs": round(float(soak_s), 2),
        "overhead_vs_clean": round(float(soak_s) / float(clean_s), 2),
        "final_run_model_rows": final["model_rows"], "final_run_store_hits": final["store_hits"],
        # Rows the killed runs scored and kept, plus the final run's: the work lost in flight at
        # each kill shows in the overhead instead.
        "model_rows_kept_in_all": final["store_hits"] + final["model_rows"],
        "rows_in_output": soak.num_rows, "scores_differing_from_clean": differ,
    },
    "cluster": {
        "rows": int(cluster_rows), "executor_kills": len(cluster_kills.split()),
        "query_s": round(float(cluster_s), 2), "rows_in_output": len(ids), "duplicate_rows": len(ids) - len(set(ids)),
        "scores_differing_from_clean": cluster_differ,
    },
}
json.dump(result, open("bench/results/soak.json", "w"), indent=2)
print(json.dumps(result, indent=2))
PYEOF
