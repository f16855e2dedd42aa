#!/usr/bin/env python3
"""Builds skyscore's sample data, tiny checkpoints and transformers-computed expected scores.

Run from the repository root (see tests/reference/README.md for the environment):

    python tests/reference/make_fixtures.py --shared ../shared

Writes
  sample_data/sft_sample.parquet, sample_data/sft_sample.jsonl   real Alpaca-style rows (MIT / Apache-2.0)
  sample_data/models/tiny-llama/    LlamaForSequenceClassification, f32, sharded safetensors
  sample_data/models/tiny-qwen3/    Qwen3ForSequenceClassification, f16 single file
  tests/fixtures/parity_rows.jsonl  sample rows + hand-written edge cases
  tests/fixtures/expected/<model>.<case>.jsonl   scores by transformers, model-card procedure
  tests/fixtures/templates/*        the real chat templates and their transformers renderings

Everything is seeded: rerunning gives the same files.
"""
import argparse
import copy
import json
import os
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer, models, trainers
from tokenizers import pre_tokenizers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForSequenceClassification,
)

ROOT = Path(__file__).resolve().parents[2]

# The prompt procedure is the reference scorer's own (the model card's).
from reference_score import prompt_text as model_card_text  # noqa: E402
SEED = 20261126

# Permissive sources only (PROVENANCE.json in ../shared): MIT and Apache-2.0.
SOURCES = [
    ("gsm8k_train_alpaca.json", 90, "MIT (GSM8K, openai/grade-school-math)"),
    ("gpteacher_codegen_instruct.json", 60, "MIT (teknium1/GPTeacher)"),
    ("gpteacher_roleplay_instruct.json", 60, "MIT (teknium1/GPTeacher)"),
    ("gpteacher_toolformer_dedupe.json", 40, "MIT (teknium1/GPTeacher)"),
    ("self_instruct_user_oriented_alpaca.json", 70, "Apache-2.0 (yizhongw/self-instruct)"),
]

EDGE_CASES = [
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    {"instruction": "Say hi.", "input": None, "output": "Hi!"},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "  leading and trailing spaces  ", "input": "  padded input \n", "output": "\n\n  answer with newlines  \n"},
    {"instruction": "\tTabbed\tinstruction\r\nwith CRLF", "input": "\n", "output": "ok\r\n"},
    {"instruction": "Describe this emoji: 🦀🚀👩‍👩‍👧", "input": "", "output": "A crab 🦀, a rocket 🚀 and a family 👩‍👩‍👧 (ZWJ sequence)."},
    {"instruction": "把这句话翻译成英文。", "input": "我喜欢机器学习。", "output": "I like machine learning. 日本語もOK。한국어도."},
    {"instruction": "Arabic and combining marks", "input": "مرحبا بالعالم", "output": "e\u0301 n\u0303 — café, naïve, Ångström"},
    {"instruction": "<|begin_of_text|>Starts with the Llama BOS text", "input": "", "output": "fine"},
    {"instruction": "Contains <|eot_id|> and <|start_header_id|>user<|end_header_id|> inside", "input": "<|im_start|>", "output": "Also <|im_end|> and <|endoftext|> here<|eot_id|>"},
    {"instruction": "Reasoning", "input": "", "output": "<think>\nsome hidden reasoning\n</think>\n\nThe visible answer."},
    {"instruction": "Empty output", "input": "", "output": ""},
    {"instruction": "", "input": "only an input", "output": "instruction was empty"},
    {"instruction": "Whitespace only output", "input": " ", "output": "   "},
    {"instruction": "Jinja-looking text {{ bos_token }} {% if x %}", "input": "{# comment #}", "output": "{{ '}}' }} %}"},
    {"instruction": "Quotes \"double\" and 'single' and \\backslash\\", "input": "", "output": "json: {\"a\": [1, 2]}"},
    {"instruction": "Numbers", "input": "", "output": " ".join(str(i) for i in range(300))},
    {"instruction": "Long repeated text", "input": "", "output": "All work and no play makes Jack a dull boy. " * 60},
]


def load_rows(shared: Path):
    rng = random.Random(SEED)
    rows = []
    for file, n, licence in SOURCES:
        data = json.load(open(shared / "data" / "sft" / file))
        picked = rng.sample(range(len(data)), n)
        for i in sorted(picked):
            r = data[i]
            rows.append({
                "id": len(rows),
                "instruction": r["instruction"],
                "input": r.get("input", ""),
                "output": r.get("output", r.get("response")),
                "source": f"{file}#{i}",
            })
    return rows


def hh_transcript_to_messages(text):
    """HH-RLHF transcripts ("\n\nHuman: ...\n\nAssistant: ...") as chat messages."""
    import re
    parts = re.split(r"\n\n(Human|Assistant): ", "\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


def write_preference_sample(shared: Path, n=64):
    """The first `n` HH-RLHF harmless-base test pairs (MIT) as JSON message lists."""
    import gzip
    out = ROOT / "sample_data" / "preference_sample.jsonl"
    with gzip.open(shared / "data" / "preference" / "hh_rlhf_harmless_base_test.jsonl.gz", "rt") as f, open(out, "w") as w:
        for i, line in enumerate(f):
            if i >= n:
                break
            pair = json.loads(line)
            w.write(json.dumps({"id": i, "chosen": json.dumps(hh_transcript_to_messages(pair["chosen"]), ensure_ascii=False),
                                "rejected": json.dumps(hh_transcript_to_messages(pair["rejected"]), ensure_ascii=False)},
                               ensure_ascii=False) + "\n")


def write_sample_data(rows):
    out = ROOT / "sample_data"
    out.mkdir(exist_ok=True)
    table = pa.table({
        "id": pa.array([r["id"] for r in rows], pa.int64()),
        "instruction": [r["instruction"] for r in rows],
        "input": [r["input"] for r in rows],
        "output": [r["output"] for r in rows],
        "source": [r["source"] for r in rows],
    })
    pq.write_table(table, out / "sft_sample.parquet", compression="zstd")
    with open(out / "sft_sample.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def train_tokenizer(shared: Path, which: str, corpus, vocab_size: int, specials):
    """A small BPE with the real tokenizer's normaliser, pre-tokeniser, decoder and
    post-processor, and the real special tokens appended after the learned vocabulary."""
    real = json.load(open(shared / "tokenizers" / which / "tokenizer.json"))
    real_tok = Tokenizer.from_file(str(shared / "tokenizers" / which / "tokenizer.json"))
    tok = Tokenizer(models.BPE())
    if real_tok.normalizer is not None:
        tok.normalizer = real_tok.normalizer
    tok.pre_tokenizer = real_tok.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    trained = json.loads(tok.to_str())
    out = copy.deepcopy(real)
    out["model"]["vocab"] = trained["model"]["vocab"]
    out["model"]["merges"] = trained["model"]["merges"]
    base = len(trained["model"]["vocab"])
    real_added = {t["content"]: t for t in real["added_tokens"]}
    out["added_tokens"] = []
    new_ids = {}
    for i, content in enumerate(specials):
        t = dict(real_added[content])
        t["id"] = base + i
        new_ids[content] = base + i
        out["added_tokens"].append(t)
    # Point the post-processor's special tokens at their new ids.
    def remap(node):
        if isinstance(node, dict):
            if "ids" in node and "tokens" in node and isinstance(node["ids"], list):
                node["ids"] = [new_ids[t] for t in node["tokens"]]
            for v in node.values():
                remap(v)
        elif isinstance(node, list):
            for v in node:
                remap(v)
    remap(out.get("post_processor"))
    out["truncation"] = None
    out["padding"] = None
    return out, new_ids


def tokenizer_config(shared: Path, which: str, keep_specials, overrides):
    real = json.load(open(shared / "tokenizers" / which / "tokenizer_config.json"))
    cfg = {k: v for k, v in real.items() if k not in ("added_tokens_decoder",)}
    cfg.update(overrides)
    if "additional_special_tokens" in cfg:
        cfg["additional_special_tokens"] = [t for t in cfg["additional_special_tokens"] if t in keep_specials]
    return cfg


def init_unit_scale(model, seed):
    """Unit-scale random weights: activations keep O(1) magnitude through the layers, so a
    RoPE, norm or GQA mistake moves the score by a visible amount."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif p.dim() == 2 and "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / (p.shape[1] ** 0.5))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def build_checkpoint(shared, which, arch, corpus, out_dir: Path):
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if which == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
        pad = "<|reserved_special_token_0|>"
        tok_json, ids = train_tokenizer(shared, which, corpus, 1000, specials)
        tcfg = tokenizer_config(shared, which, specials, {"pad_token": pad, "model_max_length": 131072})
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>",
                    "<tool_response>", "</tool_response>", "<think>", "</think>"]
        pad = "<|endoftext|>"
        tok_json, ids = train_tokenizer(shared, which, corpus, 1200, specials)
        tcfg = tokenizer_config(shared, which, specials, {})
    json.dump(tok_json, open(out_dir / "tokenizer.json", "w"), ensure_ascii=False, indent=1)
    tcfg["added_tokens_decoder"] = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in tok_json["added_tokens"]}
    json.dump(tcfg, open(out_dir / "tokenizer_config.json", "w"), ensure_ascii=False, indent=2)
    n_tokens = max(t["id"] for t in tok_json["added_tokens"]) + 1

    if arch == "llama":
        config = LlamaConfig(
            vocab_size=n_tokens, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
            rms_norm_eps=1e-5, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
            pad_token_id=ids[pad], bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|eot_id|>"],
            num_labels=1, tie_word_embeddings=False)
        model = LlamaForSequenceClassification(config)
        save_dtype, shard = torch.float32, "200KB"
    else:
        # vocab larger than the tokenizer, as in the real Qwen3 checkpoints
        config = Qwen3Config(
            vocab_size=(n_tokens + 63) // 64 * 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=8192,
            rms_norm_eps=1e-6, rope_theta=1000000.0, pad_token_id=ids[pad], eos_token_id=ids["<|im_end|>"],
            num_labels=1, tie_word_embeddings=False)
        model = Qwen3ForSequenceClassification(config)
        save_dtype, shard = torch.float16, "10GB"
    model.config.architectures = [type(model).__name__]
    init_unit_scale(model, SEED + (0 if arch == "llama" else 1))
    model.to(save_dtype).save_pretrained(out_dir, max_shard_size=shard, safe_serialization=True)
    # Reload what was written, as a user would, for the reference computation.
    tok = AutoTokenizer.from_pretrained(out_dir)
    ref = AutoModelForSequenceClassification.from_pretrained(out_dir, torch_dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    return tok, ref


@torch.no_grad()
def expected_scores(tok, model, rows, max_length, side):
    tok.truncation_side = side
    out = []
    for r in rows:
        text = model_card_text(tok, r)
        full = tok(text)["input_ids"]
        enc = tok(text, return_tensors="pt", truncation=True, max_length=max_length)
        score = model(**enc).logits[0][0].item()
        out.append({"id": r["id"], "score": score, "num_tokens": enc["input_ids"].shape[1],
                    "truncated": len(full) > max_length, "input_ids": enc["input_ids"][0].tolist(), "text": text})
    # Sanity: right-padded batches of 16 reproduce the one-row scores.
    tok.padding_side = "right"
    for s in range(0, len(rows), 16):
        chunk = rows[s:s + 16]
        enc = tok([model_card_text(tok, r) for r in chunk], return_tensors="pt", padding=True,
                  truncation=True, max_length=max_length)
        batch = model(**enc).logits[:, 0].tolist()
        for b, e in zip(batch, out[s:s + 16]):
            assert abs(b - e["score"]) < 1e-4, (b, e["score"])
    return out


def write_jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


TEMPLATE_CASES = [
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  2+2?  "},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
     {"role": "assistant", "content": "<think>\nadd\n</think>\n\n6"}],
    [{"role": "user", "content": "<tool_response>\n{}\n</tool_response>"}, {"role": "assistant", "content": "x</think>y"}],
    [{"role": "user", "content": "多轮 🦀"}, {"role": "assistant", "content": "\n\nleading newlines"},
     {"role": "user", "content": "again"}, {"role": "assistant", "content": "trailing\n\n"}],
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--only-preference", action="store_true", help="only write sample_data/preference_sample.jsonl")
    args = ap.parse_args()
    write_preference_sample(args.shared)
    if args.only_preference:
        return
    torch.manual_seed(SEED)

    rows = load_rows(args.shared)
    write_sample_data(rows)
    corpus = [r["instruction"] + "\n" + (r["input"] or "") + "\n" + r["output"] for r in rows]
    parity = rows + [dict(e, id=f"edge-{i}", source="hand-written edge case") for i, e in enumerate(EDGE_CASES)]
    write_jsonl(ROOT / "tests" / "fixtures" / "parity_rows.jsonl", parity)

    tdir = ROOT / "tests" / "fixtures" / "templates"
    tdir.mkdir(parents=True, exist_ok=True)
    for which in ("llama3", "qwen3"):
        cfg = json.load(open(args.shared / "tokenizers" / which / "tokenizer_config.json"))
        (tdir / f"{which}.jinja").write_text(cfg["chat_template"])

    for name, which, arch in (("tiny-llama", "llama3", "llama"), ("tiny-qwen3", "qwen3", "qwen3")):
        tok, model = build_checkpoint(args.shared, which, arch, corpus, ROOT / "sample_data" / "models" / name)
        exp = ROOT / "tests" / "fixtures" / "expected"
        write_jsonl(exp / f"{name}.full.jsonl", expected_scores(tok, model, parity, 4096, "right"))
        head = parity[:60] + parity[len(rows):]
        write_jsonl(exp / f"{name}.right64.jsonl", expected_scores(tok, model, head, 64, "right"))
        write_jsonl(exp / f"{name}.left64.jsonl", expected_scores(tok, model, head, 64, "left"))
        renders = [{"messages": m, "text": tok.apply_chat_template(m, tokenize=False),
                    "text_with_generation_prompt": tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)}
                   for m in TEMPLATE_CASES]
        write_jsonl(tdir / f"{which}.renders.jsonl", renders)
        print(name, "done")


if __name__ == "__main__":
    main()
