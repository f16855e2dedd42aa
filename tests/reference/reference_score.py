#!/usr/bin/env python3
"""The Python reference scorer: what users run today (transformers, batches of 16, JSONL in,
{"id", "score"} out), used as the baseline in bench/. Model-card prompt procedure.

    python tests/reference/reference_score.py --model DIR --input rows.jsonl --output out.jsonl \
        [--batch-size 16] [--max-length 4096] [--sort-by-length] [--dtype float32] \
        [--device cuda] [--attn sdpa] [--warmup]

--warmup runs one batch before the clock starts (CUDA context, cuBLAS handles, kernel choice);
score_s in the printed stats is the scoring loop alone (tokenizing batches included).
"""
import argparse
import json
import sys
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def prompt_text(tok, row):
    prompt = row["instruction"]
    if row.get("input"):
        prompt += "\n" + row["input"]
    conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
    text = tok.apply_chat_template(conv, tokenize=False)
    if tok.bos_token is not None and text.startswith(tok.bos_token):
        text = text[len(tok.bos_token):]
    return text


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--sort-by-length", action="store_true")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--warmup", action="store_true")
    args = ap.parse_args()

    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "right"  # left padding would shift positions and change scores
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, dtype=getattr(torch, args.dtype), attn_implementation=args.attn).to(args.device).eval()
    rows = [json.loads(l) for l in open(args.input) if l.strip()]
    texts = [prompt_text(tok, r) for r in rows]
    lengths = [len(tok(t, truncation=True, max_length=args.max_length)["input_ids"]) for t in texts]
    order = sorted(range(len(rows)), key=lambda i: -lengths[i]) if args.sort_by_length else list(range(len(rows)))
    if args.warmup and rows:
        enc = tok([texts[i] for i in order[:args.batch_size]], return_tensors="pt", padding=True,
                  truncation=True, max_length=args.max_length).to(args.device)
        model(**enc)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
    loaded = time.perf_counter()
    scores = [None] * len(rows)
    for s in range(0, len(order), args.batch_size):
        idx = order[s:s + args.batch_size]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                  max_length=args.max_length).to(args.device)
        logits = model(**enc).logits[:, 0].float().tolist()
        for i, v in zip(idx, logits):
            scores[i] = v
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    done = time.perf_counter()
    with open(args.output, "w") as f:
        for i, (r, s) in enumerate(zip(rows, scores)):
            f.write(json.dumps({"id": r.get("id", i), "score": s}) + "\n")
    tokens = sum(lengths)
    stats = {"rows": len(rows), "tokens": tokens, "wall_s": done - started, "score_s": done - loaded,
             "tokens_per_s": tokens / (done - started)}
    print(json.dumps(stats), file=sys.stderr)


if __name__ == "__main__":
    main()
