#!/usr/bin/env python3
"""Makes a seeded random LlamaForSequenceClassification in the real shape of a Skywork-Reward-V2
Llama checkpoint (Llama-3.2-1B or Llama-3.1-8B: GQA, llama3 rope scaling), saved in bf16 with a
real Llama-3 tokenizer, for throughput and parity checks where the real weights are not at hand.
Random weights exercise exactly the same kernels and shapes as the real ones.

    python bench/gpu/make_llama_shape.py --shape 1b --tokenizer DIR --out DIR [--seed 0]

DIR for --tokenizer holds tokenizer.json and tokenizer_config.json (with its chat template).
Works with transformers 4.57 and 5.x; builds the weights on the GPU when there is one.
"""
import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

# From the config.json files of meta-llama/Llama-3.2-1B and meta-llama/Llama-3.1-8B.
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
               rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    # A small stand-in for dry runs of the GPU check on a CPU machine.
    "test": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                 rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}
# A special token the chat template never emits: pooling then picks each row's last token.
PAD_TOKEN = "<|reserved_special_token_2|>"
PAD_TOKEN_ID = 128004


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    config = LlamaConfig(vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_theta=500000.0, bos_token_id=128000, eos_token_id=128009,
                         pad_token_id=PAD_TOKEN_ID, num_labels=1, initializer_range=0.02,
                         architectures=["LlamaForSequenceClassification"], **SHAPES[args.shape])
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForSequenceClassification(config)
    model = model.to(torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)  # safetensors

    src = Path(args.tokenizer)
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    tok_config["pad_token"] = PAD_TOKEN
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
    print(json.dumps({"shape": args.shape, "parameters": params, "out": str(out),
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
