#!/usr/bin/env bash
# A soak with faults, where every kill is checked to land on a process that is alive and
# mid-work. (1) `skyscore score` over ROWS (default 200,000) distinct rows with the score store,
# killed with `kill -9` KILLS times (default 5): each run is killed once it has committed STEP
# more scores to the store (read from its own debug log, the line the store writer prints after
# each durable commit), never after it finished; then a last run completes the job. Its output
# must have every row once, in order, with the scores of an uninterrupted run, bit for bit.
# (2) A cluster COPY of CLUSTER_ROWS (default 20,000) rows with two executors, executor 1 killed
# twice while it is scoring (after it logged device batches of this query), and restarted; the
# output must have every row once with the uninterrupted scores.
# Figures go to bench/results/soak.json; the script fails if a kill missed a running process.
#
#   bench/soak.sh [SKYSCORE_BINARY] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-/var/tmp/skyscore-target-release/release/skyscore}"
PY="${2:-/var/tmp/skyscore-pyci/bin/python}"
ROWS="${ROWS:-200000}"
KILLS="${KILLS:-5}"
CLUSTER_ROWS="${CLUSTER_ROWS:-20000}"
STEP="${STEP:-$((ROWS / (KILLS + 2)))}"
MODEL=sample_data/models/tiny-llama
WORK=$(mktemp -d /var/tmp/skyscore-soak.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; pids=(); }
trap 'cleanup; rm -rf "$WORK"' EXIT
echo "soak: $ROWS rows, $KILLS kills every $STEP committed scores, work folder $WORK"
now() { date +%s.%N; }
# The highest `committed=N` a run's debug log shows (0 before its first commit).
committed_in() { grep -o 'scores committed to the store.*committed=[0-9]*' "$1" 2>/dev/null | tail -1 | sed 's/.*committed=//' || true; }
"$PY" bench/make_large_table.py --rows "$ROWS" --out "$WORK/rows.parquet"
score_args=(score --model "$MODEL" --max-length 64 --input "$WORK/rows.parquet" --no-progress)

# 1a. The uninterrupted run, no store: the reference.
t0=$(now); "$BIN" "${score_args[@]}" --output "$WORK/clean.parquet" --no-store 2>/dev/null; t1=$(now)
clean_s=$(echo "$t1 - $t0" | bc)
echo "soak: clean run $clean_s s"

# 1b. The same job with a store, killed KILLS times mid-run, then run to the end.
runs_json=()
t2=$(now)
for k in $(seq "$KILLS"); do
  log="$WORK/run-$k.log"
  # The binary itself in the background, so that $! is skyscore (not a subshell).
  RUST_LOG=skyscore_engine=debug "$BIN" "${score_args[@]}" --output "$WORK/soak.parquet" \
    --store "$WORK/store.redb" 2>"$log" &
  pid=$!
  started=$(now)
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "soak: run $k ended before it had committed $STEP scores: the kill would miss it"; exit 1
    fi
    c=$(committed_in "$log"); c=${c:-0}
    [ "$c" -ge "$STEP" ] && break
    sleep 0.05
  done
  # Alive just before the signal, and killed by it (status 137), not finished.
  kill -0 "$pid"
  kill -9 "$pid"
  killed_at=$(now)
  status=0; wait "$pid" || status=$?
  if [ "$status" -ne 137 ]; then echo "soak: run $k exited with $status, not by the kill"; exit 1; fi
  c=$(committed_in "$log")
  in_store=$("$BIN" store info --store "$WORK/store.redb" | head -1 | sed 's/.*: \([0-9]*\) scores.*/\1/')
  scored=$(grep -c 'device batch scored' "$log" || true)
  secs=$(echo "$killed_at - $started" | bc)
  echo "soak: kill $k after $secs s, alive and mid-run: $c scores committed by this run ($scored device batches), $in_store in the store"
  runs_json+=("{\"killed_after_s\": $secs, \"exit_status\": $status, \"committed_by_this_run_at_kill\": $c, \"device_batches_before_kill\": $scored, \"store_entries_after_kill\": $in_store}")
done
"$BIN" "${score_args[@]}" --output "$WORK/soak.parquet" --store "$WORK/store.redb" --stats-json "$WORK/final.json" 2>/dev/null
t3=$(now)
soak_s=$(echo "$t3 - $t2" | bc)

# 2. The cluster: scheduler, two executors (each with its own store), a COPY; executor 1 is
# killed twice while it scores this query, and restarted each time.
"$PY" - "$WORK" "$CLUSTER_ROWS" <<'PYEOF'
import os, sys, pyarrow.parquet as pq
work, n = sys.argv[1], int(sys.argv[2])
table = pq.read_table(f"{work}/rows.parquet").slice(0, n)
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
# N RUN: starts executor N (its own ports and store), logging to executor-N-RUN.log; its pid in
# $started_pid. Started from this shell itself (not a $(...) subshell), so that `wait` can
# read how it ended.
executor() {
  RUST_LOG=skyscore_engine=debug "$BIN" cluster executor --scheduler "$address" \
    --bind "127.0.0.1:$((52300 + 10 * $1))" --grpc-port $((52301 + 10 * $1)) --concurrent-tasks 1 \
    --heartbeat-interval 1 --model "$MODEL" --max-length 64 --store "$WORK/executor-$1.redb" \
    --work-dir "$WORK/work-$1" >"$WORK/executor-$1.out" 2>"$WORK/executor-$1-$2.log" &
  started_pid=$!
  pids+=("$started_pid")
}
mkdir -p "$WORK/work-0" "$WORK/work-1"
executor 0 0
executor 1 0; e1=$started_pid
sleep 2
t4=$(now)
"$BIN" sql --cluster "df://$address" --model "$MODEL" --max-length 64 -t "sft=$WORK/ctable" "$query" \
  >"$WORK/cluster.out" 2>"$WORK/cluster.err" &
client=$!
cluster_kills=()
for k in 1 2; do
  log="$WORK/executor-1-$((k - 1)).log"
  # Kill once this executor has scored 20 device batches of the query, while it is alive.
  for _ in $(seq 1200); do
    [ "$(grep -c 'device batch scored' "$log" 2>/dev/null || true)" -ge 20 ] && break
    kill -0 "$client" 2>/dev/null || break
    sleep 0.05
  done
  batches=$(grep -c 'device batch scored' "$log" || true)
  if [ "$batches" -lt 20 ] || ! kill -0 "$e1" 2>/dev/null; then
    echo "soak: cluster: executor 1 did not score 20 batches while alive (scored $batches): the kill would miss it"; exit 1
  fi
  kill -9 "$e1"
  status=0; wait "$e1" || status=$?
  if [ "$status" -ne 137 ]; then echo "soak: cluster: executor 1 exited with $status, not by the kill"; exit 1; fi
  cluster_kills+=("{\"device_batches_before_kill\": $batches, \"exit_status\": $status}")
  echo "soak: cluster: executor 1 killed ($k) after $batches device batches of the query"
  sleep 1
  executor 1 "$k"; e1=$started_pid
done
cluster_ok=true
wait "$client" || cluster_ok=false
t5=$(now)
cluster_s=$(echo "$t5 - $t4" | bc)
cleanup

runs=$(IFS=,; echo "[${runs_json[*]}]")
ckills=$(IFS=,; echo "[${cluster_kills[*]}]")
"$PY" - "$WORK" "$ROWS" "$clean_s" "$soak_s" "$runs" "$cluster_ok" "$cluster_s" "$ckills" "$CLUSTER_ROWS" "$BIN" "$STEP" <<'PYEOF'
import json, sys
sys.path.insert(0, "bench")
from machine_facts import facts
import pyarrow.parquet as pq
work, rows, clean_s, soak_s, runs, cluster_ok, cluster_s, ckills, cluster_rows, binary, step = sys.argv[1:12]
runs, ckills = json.loads(runs), json.loads(ckills)
clean, soak = pq.read_table(f"{work}/clean.parquet"), pq.read_table(f"{work}/soak.parquet")
assert soak.num_rows == clean.num_rows == int(rows), (soak.num_rows, clean.num_rows)
assert soak.column("id").to_pylist() == clean.column("id").to_pylist(), "every row once, in input order"
differ = sum(a != b for a, b in zip(soak.column("score").to_pylist(), clean.column("score").to_pylist()))
assert differ == 0, f"{differ} scores differ from the uninterrupted run"
final = json.load(open(f"{work}/final.json"))
assert all(r["exit_status"] == 137 and r["committed_by_this_run_at_kill"] >= int(step) for r in runs), runs
assert cluster_ok == "true", open(f"{work}/cluster.err").read()[-2000:]
cc, cl = pq.read_table(f"{work}/cluster-clean.parquet"), pq.read_table(f"{work}/cluster.parquet")
clean_by_id = dict(zip(cc.column("id").to_pylist(), cc.column("score").to_pylist()))
ids = cl.column("id").to_pylist()
assert len(ids) == len(set(ids)) == int(cluster_rows), (len(ids), len(set(ids)))
cluster_differ = sum(clean_by_id[i] != s for i, s in zip(ids, cl.column("score").to_pylist()))
assert cluster_differ == 0, f"{cluster_differ} cluster scores differ"
machine = facts()
result = {
    "what": "kill -9 soak: score with the store, each run killed once it had committed a set number of scores "
            "(alive and mid-run, exit status 137 checked), then run to the end; a cluster COPY with one of two "
            "executors killed twice while it scored",
    **machine, "binary": binary,
    "model": "tiny-llama, max_length 64",
    "score": {
        "rows": int(rows), "kills": len(runs), "kill_after_committed": int(step), "killed_runs": runs,
        "clean_run_s": round(float(clean_s), 2), "soak_s_all_runs": round(float(soak_s), 2),
        "time_in_killed_runs_s": round(sum(r["killed_after_s"] for r in runs), 2),
        "final_run_model_rows": final["model_rows"], "final_run_store_hits": final["store_hits"],
        "rows_in_output": soak.num_rows, "scores_differing_from_clean": differ,
    },
    "cluster": {
        "rows": int(cluster_rows), "executor_kills": ckills,
        "query_s": round(float(cluster_s), 2), "rows_in_output": len(ids), "duplicate_rows": len(ids) - len(set(ids)),
        "scores_differing_from_clean": cluster_differ,
    },
}
json.dump(result, open("bench/results/soak.json", "w"), indent=2)
print(json.dumps(result, indent=2))
PYEOF
