#!/usr/bin/env python3
"""A large SFT Parquet table for the streaming COPY benchmark: the sample rows repeated with a
row number mixed into every instruction, so all rows are distinct (the score cache cannot
shortcut them)."""
import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=200_000)
ap.add_argument("--out", required=True)
args = ap.parse_args()

sample = [json.loads(l) for l in open(ROOT / "sample_data/sft_sample.jsonl")]
writer = None
chunk = 50_000
for start in range(0, args.rows, chunk):
    ids = list(range(start, min(args.rows, start + chunk)))
    rows = [sample[i % len(sample)] for i in ids]
    table = pa.table({
        "id": pa.array(ids, pa.int64()),
        "instruction": [f"[{i}] " + r["instruction"] for i, r in zip(ids, rows)],
        "input": [r["input"] for r in rows],
        "output": [r["output"] for r in rows],
    })
    if writer is None:
        writer = pq.ParquetWriter(args.out, table.schema, compression="zstd")
    writer.write_table(table, row_group_size=16_384)
writer.close()
print(f"{args.rows} rows -> {args.out}")
