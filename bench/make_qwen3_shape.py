#!/usr/bin/env python3
"""A seeded random Qwen3ForSequenceClassification in the Skywork-Reward-V2-Qwen3-0.6B shape (hidden 1024,
28 layers, 16 heads, 8 KV heads, head_dim 128, intermediate 3072, real vocabulary) with the real Qwen3
tokenizer and chat template: CPU benchmarks on the size of model a CPU user runs. Not committed (2.4 GB)."""
import argparse
import shutil
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForSequenceClassification

ROOT = Path(__file__).resolve().parents[1]

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--tokenizer-dir", default=str(ROOT.parent / "shared/tokenizers/qwen3"),
                help="tokenizer.json + tokenizer_config.json of Qwen3 (with its chat template)")
args = ap.parse_args()

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(Path(args.tokenizer_dir) / f, out / f)
cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, num_labels=1,
                  pad_token_id=151643)
torch.manual_seed(0)
model = Qwen3ForSequenceClassification(cfg).to(torch.float32)
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.dim() == 2:
            p.normal_(0, 1.0 / p.shape[1] ** 0.5)
model.config.architectures = ["Qwen3ForSequenceClassification"]
model.save_pretrained(out)
print(f"{sum(p.numel() for p in model.parameters())/1e6:.1f}M parameters -> {out}")
