#!/usr/bin/env bash
# Streaming curation in SQL: COPY (SELECT *, skywork_score(...)) over a large Parquet table,
# measuring peak RSS (GNU time) and checking that every row comes out exactly once.
#
#   ROWS=200000 MAX_LENGTH=32 bench/large_copy.sh [SKYSCORE_BINARY] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-/var/tmp/skyscore-target-release/release/skyscore}"
PY="${2:-/var/tmp/skyscore-py/venv/bin/python}"
ROWS="${ROWS:-200000}"
MAX_LENGTH="${MAX_LENGTH:-32}"
WORK=/var/tmp/skyscore-bench
mkdir -p "$WORK" bench/results
IN="$WORK/large-$ROWS.parquet"
OUT="$WORK/large-$ROWS-scored.parquet"
[ -f "$IN" ] || "$PY" bench/make_large_table.py --rows "$ROWS" --out "$IN"
rm -f "$OUT"
/usr/bin/time -v "$BIN" sql --model sample_data/models/tiny-llama --max-length "$MAX_LENGTH" --no-progress --no-store \
  --stats-json "$WORK/large-$ROWS.stats.json" -t sft="$IN" \
  "COPY (SELECT *, skywork_score(instruction, input, output) AS score FROM sft) TO '$OUT' STORED AS PARQUET" \
  2> "$WORK/large-$ROWS.time" >/dev/null
check=$("$BIN" sql -t out="$OUT" --format csv \
  "SELECT count(*) AS n, count(DISTINCT id) AS ids, min(id) AS lo, max(id) AS hi, count(score) AS scored FROM out" | tail -1)
rss_kb=$(grep "Maximum resident set size" "$WORK/large-$ROWS.time" | awk '{print $NF}')
"$PY" - "$WORK/large-$ROWS.stats.json" "$IN" "$OUT" "$rss_kb" "$check" "$ROWS" "$MAX_LENGTH" <<'PYEOF'
import json, os, sys
stats_path, inp, out, rss_kb, check, rows, max_length = sys.argv[1:]
s = json.load(open(stats_path))
n, ids, lo, hi, scored = (int(x) for x in check.split(","))
res = {"rows": int(rows), "max_length": int(max_length), "input_bytes": os.path.getsize(inp),
       "output_bytes": os.path.getsize(out), "peak_rss_bytes": int(rss_kb) * 1024,
       "rows_out": n, "distinct_ids_out": ids, "min_id": lo, "max_id": hi, "scored_out": scored,
       "model_rows": s["model_rows"], "tokens": s["tokens"], "wall_s": round(s["wall_s"], 1),
       "tokens_per_s": round(s["tokens_per_s"])}
assert n == ids == scored == int(rows) and lo == 0 and hi == int(rows) - 1, res
print(json.dumps(res, indent=1))
json.dump(res, open(f"bench/results/large-copy-{rows}.json", "w"), indent=1)
PYEOF
