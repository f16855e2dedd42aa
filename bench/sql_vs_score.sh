#!/usr/bin/env bash
# Does scoring inside SQL cost anything over `skyscore score`? The same ROWS (default 20,000)
# distinct rows of the tiny model, to Parquet, without a store: `skyscore score` against
# `skyscore sql "COPY (SELECT ..., skywork_score(...)) TO ..."`, alternated RUNS times (default 3);
# tokens over each process's wall time. Figures go to bench/results/sql-vs-score-<cpu class>.json.
#
#   bench/sql_vs_score.sh [SKYSCORE_BINARY] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-/var/tmp/skyscore-target-release/release/skyscore}"
PY="${2:-/var/tmp/skyscore-pyci/bin/python}"
ROWS="${ROWS:-20000}"
RUNS="${RUNS:-3}"
MODEL=sample_data/models/tiny-llama
WORK=$(mktemp -d /var/tmp/skyscore-sql-vs-score.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$PY" bench/make_large_table.py --rows "$ROWS" --out "$WORK/rows.parquet"
wall() { # COMMAND...: its wall seconds
  local t0 t1
  t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
copy="COPY (SELECT id, skywork_score(instruction, input, output) AS score FROM sft) TO '$WORK/sql.parquet'"
score_s=(); sql_s=()
for i in $(seq "$RUNS"); do
  score_s+=("$(wall "$BIN" score --model "$MODEL" --input "$WORK/rows.parquet" --output "$WORK/score.parquet" \
    --no-store --no-progress --stats-json "$WORK/score.json")")
  sql_s+=("$(wall "$BIN" sql --model "$MODEL" -t "sft=$WORK/rows.parquet" --no-store --no-progress \
    --stats-json "$WORK/sql.json" "$copy")")
  echo "sql_vs_score: run $i: score ${score_s[-1]} s, sql ${sql_s[-1]} s"
done
"$PY" - "$WORK" "$ROWS" "$BIN" "${score_s[*]}" "${sql_s[*]}" <<'PYEOF'
import json, statistics, sys
sys.path.insert(0, "bench")
from machine_facts import facts
import pyarrow.parquet as pq
work, rows, binary, score_s, sql_s = sys.argv[1:6]
score_s, sql_s = [float(x) for x in score_s.split()], [float(x) for x in sql_s.split()]
tokens = json.load(open(f"{work}/score.json"))["tokens"]
sql_tokens = json.load(open(f"{work}/sql.json"))["tokens"]
assert tokens == sql_tokens, (tokens, sql_tokens)
a, b = pq.read_table(f"{work}/score.parquet"), pq.read_table(f"{work}/sql.parquet").sort_by("id")
assert a.column("id").to_pylist() == b.column("id").to_pylist()
assert a.column("score").to_pylist() == b.column("score").to_pylist(), "the same bits"
machine = facts()
cpu_class = machine["cpu_class"]
result = {
    "what": "tiny-llama, distinct rows to Parquet, no store: skyscore score against skyscore sql COPY, alternated; "
            "tokens over each process's wall time",
    **machine, "binary": binary,
    "rows": int(rows), "tokens": tokens, "score_s": score_s, "sql_s": sql_s,
    "score_tokens_per_s": [round(tokens / s) for s in score_s], "sql_tokens_per_s": [round(tokens / s) for s in sql_s],
    "sql_over_score_median_time": round(statistics.median(sql_s) / statistics.median(score_s), 3),
    "same_scores_bit_for_bit": True,
}
json.dump(result, open(f"bench/results/sql-vs-score-{cpu_class}.json", "w"), indent=2)
print(json.dumps(result, indent=2))
PYEOF
