#!/usr/bin/env bash
# What the score store costs a run: `skyscore score` on ROWS (default 8,000) distinct rows of the
# tiny model at MAX_LENGTH (default 64: short rows, many scores per second, the most commits a
# second), with a fresh store and with `--no-store`, alternated RUNS times (default 7) so both
# see the same machine state; wall time of each, medians and their ratio, and the store's
# commits and syncs per run (strace, when installed). Figures go to
# bench/results/store-cost-<cpu class>.json.
#
#   bench/store_cost.sh [SKYSCORE_BINARY] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-/var/tmp/skyscore-target-release/release/skyscore}"
PY="${2:-/var/tmp/skyscore-pyci/bin/python}"
ROWS="${ROWS:-8000}"
RUNS="${RUNS:-7}"
MAX_LENGTH="${MAX_LENGTH:-64}"
MODEL=sample_data/models/tiny-llama
WORK=$(mktemp -d /var/tmp/skyscore-store-cost.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$PY" bench/make_large_table.py --rows "$ROWS" --out "$WORK/rows.parquet"
run() { # OUT EXTRA...: one scoring run, its wall seconds on stdout
  local out=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN" score --model "$MODEL" --max-length "$MAX_LENGTH" --input "$WORK/rows.parquet" --output "$out" \
    --no-progress "$@" 2>/dev/null
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
run "$WORK/warm.parquet" --no-store >/dev/null # page cache and allocator warm for both sides
with=(); without=()
for i in $(seq "$RUNS"); do
  without+=("$(run "$WORK/a.parquet" --no-store)")
  rm -f "$WORK"/store-*.redb*
  with+=("$(run "$WORK/b.parquet" --store "$WORK/store-$i.redb")")
  echo "store_cost: run $i: --no-store ${without[-1]} s, --store ${with[-1]} s"
done
cmp "$WORK/a.parquet" "$WORK/b.parquet" >/dev/null || { echo "store_cost: the two outputs differ"; exit 1; }
syncs=null; commits=null
if command -v strace >/dev/null; then
  rm -f "$WORK"/store-s.redb*
  strace -f -qq -e trace=fsync,fdatasync -o "$WORK/strace.txt" \
    "$BIN" score --model "$MODEL" --max-length "$MAX_LENGTH" --input "$WORK/rows.parquet" --output "$WORK/c.parquet" --no-progress \
    --store "$WORK/store-s.redb" 2>/dev/null
  syncs=$(grep -c -E 'fsync|fdatasync' "$WORK/strace.txt" || true)
fi
commits=$(RUST_LOG=skyscore_engine=debug "$BIN" score --model "$MODEL" --max-length "$MAX_LENGTH" --input "$WORK/rows.parquet" \
  --output "$WORK/d.parquet" --no-progress --store "$WORK/store-c.redb" 2>&1 | grep -c 'scores committed to the store' || true)
"$PY" - "$ROWS" "$BIN" "$syncs" "$commits" "${without[*]}" "${with[*]}" "$MAX_LENGTH" <<'PYEOF'
import json, statistics, sys
sys.path.insert(0, "bench")
from machine_facts import facts
rows, binary, syncs, commits, without, with_store, max_length = sys.argv[1:8]
without, with_store = [float(x) for x in without.split()], [float(x) for x in with_store.split()]
machine = facts()
cpu_class = machine["cpu_class"]
result = {
    "what": "skyscore score, tiny-llama, distinct rows: a fresh score store against --no-store, alternated; "
            "medians, and the ratio of the per-pair sums (each pair ran back to back)",
    **machine, "binary": binary, "rows": int(rows), "max_length": int(max_length),
    "no_store_s": without, "store_s": with_store,
    "median_no_store_s": round(statistics.median(without), 3), "median_store_s": round(statistics.median(with_store), 3),
    "store_over_no_store": round(statistics.median(with_store) / statistics.median(without), 3),
    "store_over_no_store_sums": round(sum(with_store) / sum(without), 3),
    "commits_per_run": int(commits), "syncs_per_run": None if syncs == "null" else int(syncs),
}
json.dump(result, open(f"bench/results/store-cost-{cpu_class}.json", "w"), indent=2)
print(json.dumps(result, indent=2))
PYEOF
