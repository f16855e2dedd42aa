#!/usr/bin/env bash
# Peak memory of one long row: `skyscore score` on one row truncated to 8,192 and to 32,768
# tokens, against one short row, on the tiny model (its config copied with
# max_position_embeddings raised to 32,768 so the longer row is allowed; the weights are the
# shipped ones). Peak RSS from GNU time. Memory should grow with the row, not its square.
# Figures go to bench/results/long-rows-<cpu class>.json.
#
#   bench/long_rows.sh [SKYSCORE_BINARY] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-/var/tmp/skyscore-target-release/release/skyscore}"
PY="${2:-python3}"
WORK=$(mktemp -d /var/tmp/skyscore-long-rows.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/model"
cp sample_data/models/tiny-llama/* "$WORK/model/"
"$PY" - "$WORK" <<'PYEOF'
import json, sys
work = sys.argv[1]
config = json.load(open(f"{work}/model/config.json"))
config["max_position_embeddings"] = 32768
json.dump(config, open(f"{work}/model/config.json", "w"), indent=2)
# About 6.7 tokens per unit with this tokenizer: a little over 8,192 and 32,768 tokens, so that
# the prompt itself (and the tokenizer's work on it) is sized like the row scored.
for name, units in [("long8k", 1_250), ("long32k", 4_950)]:
    words = " ".join(f"word{i % 997} and more" for i in range(units))
    with open(f"{work}/{name}.jsonl", "w") as f:
        f.write(json.dumps({"id": 1, "instruction": "Summarise this.", "input": "", "output": words}) + "\n")
with open(f"{work}/short.jsonl", "w") as f:
    f.write(json.dumps({"id": 1, "instruction": "Say hi.", "input": "", "output": "Hi!"}) + "\n")
PYEOF
peak_kb() { # INPUT MAX_LENGTH: peak RSS in kB of one scoring run, and its token count
  /usr/bin/time -f "%M" -o "$WORK/time.txt" "$BIN" score --model "$WORK/model" --input "$1" \
    --output "$WORK/out.jsonl" --max-length "$2" --no-store --no-progress --stats-json "$WORK/s.json" 2>/dev/null
  echo "$(cat "$WORK/time.txt") $("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['tokens'])" "$WORK/s.json")"
}
read -r short_kb short_tokens < <(peak_kb "$WORK/short.jsonl" 32768)
read -r k8_kb k8_tokens < <(peak_kb "$WORK/long8k.jsonl" 8192)
read -r k32_kb k32_tokens < <(peak_kb "$WORK/long32k.jsonl" 32768)
echo "long_rows: short row ($short_tokens tokens) ${short_kb} kB, $k8_tokens tokens ${k8_kb} kB, $k32_tokens tokens ${k32_kb} kB"
"$PY" - "$BIN" "$short_kb" "$short_tokens" "$k8_kb" "$k8_tokens" "$k32_kb" "$k32_tokens" <<'PYEOF'
import json, sys
sys.path.insert(0, "bench")
from machine_facts import facts
binary, short_kb, short_t, k8_kb, k8_t, k32_kb, k32_t = sys.argv[1:8]
mb = lambda kb: round(int(kb) / 1024, 1)
machine = facts()
cpu_class = machine["cpu_class"]
result = {
    "what": "peak RSS of skyscore score on one row, tiny-llama (max_position_embeddings raised to 32768), f32, CPU",
    **machine, "binary": binary,
    "short_row": {"tokens": int(short_t), "peak_rss_mb": mb(short_kb)},
    "row_8k": {"tokens": int(k8_t), "peak_rss_mb": mb(k8_kb), "over_short_mb": round(mb(k8_kb) - mb(short_kb), 1)},
    "row_32k": {"tokens": int(k32_t), "peak_rss_mb": mb(k32_kb), "over_short_mb": round(mb(k32_kb) - mb(short_kb), 1)},
}
json.dump(result, open(f"bench/results/long-rows-{cpu_class}.json", "w"), indent=2)
print(json.dumps(result, indent=2))
PYEOF
