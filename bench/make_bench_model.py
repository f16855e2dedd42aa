#!/usr/bin/env python3
"""A seeded random Llama reward model of benchmark size (not committed): the tiny-llama
tokenizer and template with a wider, deeper decoder, so the forward pass dominates."""
import argparse
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

ROOT = Path(__file__).resolve().parents[1]

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--hidden", type=int, default=512)
ap.add_argument("--layers", type=int, default=8)
args = ap.parse_args()

src = ROOT / "sample_data/models/tiny-llama"
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(src / f, out / f)
base = LlamaConfig.from_pretrained(src)
cfg = LlamaConfig(**{**base.to_dict(), "hidden_size": args.hidden, "intermediate_size": args.hidden * 8 // 3,
                     "num_hidden_layers": args.layers, "num_attention_heads": args.hidden // 64,
                     "num_key_value_heads": max(1, args.hidden // 256), "head_dim": 64})
torch.manual_seed(0)
model = LlamaForSequenceClassification(cfg)
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.dim() == 2:
            p.normal_(0, 1.0 / p.shape[1] ** 0.5)
model.config.architectures = ["LlamaForSequenceClassification"]
model.save_pretrained(out)
print(f"{sum(p.numel() for p in model.parameters())/1e6:.1f}M parameters -> {out}")
