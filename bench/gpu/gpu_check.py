#!/usr/bin/env python3
"""The GPU check, run on the GPU machine by scripts/gpu-check.sh (which sets BIN and the CUDA
library path). Each step records its figures or its error and the next one still runs, so one
call says as much as it can. Writes gpu-check.json under $OUT and prints it last.

  (a) parity: skyscore on cuda (f32 and bf16) vs skyscore on CPU (f32 scores computed on the
      build machine and carried in dist/cpu-scores) and vs transformers' f32 expected scores,
      on the shipped fixtures; two replicas on one card (cuda:0,cuda:0) vs one; `skyscore sql` on
      the device vs transformers.
  (b) throughput: a seeded random checkpoint in the real Llama-3.2-1B shape (then, time
      allowing, Llama-3.1-8B), bf16, scored on the same real rows by skyscore and by
      transformers (bf16, sdpa, batches of 16, input order and length-sorted): tokens/s,
      ratios, max |delta|, MFU = 2 x parameters x tokens / time / the card's bf16 peak.
"""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ["BIN"]
OUT = Path(os.environ.get("OUT", "/tmp/gpu-check-out"))
WORK = Path(os.environ.get("WORK", "/tmp/gpu-check"))
PY = sys.executable
BUDGET_S = float(os.environ.get("GPU_CHECK_BUDGET_S", "450"))  # stop starting new steps after this
REPEAT = int(os.environ.get("GPU_CHECK_REPEAT", "8"))  # copies of the 320 sample rows for (b), 1B shape
# A dry run on a CPU machine checks this script itself:
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SHAPES=test GPU_CHECK_REPEAT=1 BIN=... python bench/gpu/gpu_check.py
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
SHAPES = [s for s in os.environ.get("GPU_CHECK_SHAPES", "1b,8b").split(",") if s]
STARTED = time.perf_counter()
# Dense bf16 tensor-core peak from NVIDIA's datasheets (SXM parts), TFLOP/s.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
report = {"steps": {}}


def elapsed():
    return time.perf_counter() - STARTED


def log(msg):
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


def sh(args, **kw):
    log("$ " + " ".join(str(a) for a in args))
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        tail = (r.stderr or "")[-3000:] + (r.stdout or "")[-1000:]
        raise RuntimeError(f"exit {r.returncode}: {tail}")
    return r


def step(name):
    def wrap(fn):
        def run(*a, **kw):
            log(f"== {name}")
            try:
                result = fn(*a, **kw)
                report["steps"][name] = result
                log(f"{name}: {json.dumps(result)}")
                return result
            except Exception as e:  # keep going: one call should tell as much as it can
                report["steps"][name] = {"error": str(e)[-4000:]}
                log(f"{name} FAILED: {e}")
                return None
        return run
    return wrap


def read_scores(path):
    """Scores by id; ids as text (skyscore reads a column of mixed number/string ids as text)."""
    rows = [json.loads(l) for l in open(path) if l.strip()]
    return {str(r["id"]): r["score"] for r in rows}


def max_delta(a, b):
    assert set(a) == set(b), "different row ids"
    return max(abs(a[k] - b[k]) for k in a)


def skyscore(model, rows, out, *extra):
    stats = out.with_suffix(".stats.json")
    # --no-store: every run measures the model, not the score store of an earlier run.
    sh([BIN, "score", "--model", model, "--input", rows, "--output", out, "--stats-json", stats, "--no-progress",
        "--no-store", *extra])
    return json.loads(stats.read_text())


@step("environment")
def environment():
    import torch
    import transformers
    if DEVICE == "cpu":
        report["peak_tflops"] = float(os.environ.get("PEAK_TFLOPS", "1"))
        return {"gpu": None, "torch": torch.__version__, "transformers": transformers.__version__}
    smi = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"])
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    matmul_tflops = 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12
    name = smi.stdout.strip()
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    report["peak_tflops"] = float(os.environ.get("PEAK_TFLOPS", peak or matmul_tflops))
    report["measured_matmul_tflops"] = matmul_tflops
    return {"gpu": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "bf16_matmul_8192_tflops": round(matmul_tflops, 1), "peak_tflops_used_for_mfu": report["peak_tflops"]}


@step("parity_fixtures")
def parity_fixtures():
    rows = ROOT / "tests/fixtures/parity_rows.jsonl"
    result = {}
    for model in ["tiny-llama", "tiny-qwen3"]:
        cpu = read_scores(ROOT / f"dist/cpu-scores/{model}.f32.jsonl")
        hf = read_scores(ROOT / f"tests/fixtures/expected/{model}.full.jsonl")
        spread = statistics.pstdev(hf.values())
        for dtype in ["f32", "bf16"]:
            out = WORK / f"gpu-{model}-{dtype}.jsonl"
            skyscore(ROOT / "sample_data/models" / model, rows, out, "--device", DEVICE, "--dtype", dtype)
            gpu = read_scores(out)
            result[f"{model}/{dtype}"] = {"rows": len(gpu), "max_abs_delta_vs_cpu_f32": max_delta(gpu, cpu),
                                          "max_abs_delta_vs_transformers_f32": max_delta(gpu, hf),
                                          "score_stdev": spread}
        cpu_bf16 = ROOT / f"dist/cpu-scores/{model}.bf16.jsonl"
        if cpu_bf16.exists():
            result[f"{model}/bf16"]["max_abs_delta_vs_cpu_bf16"] = max_delta(read_scores(out), read_scores(cpu_bf16))
    # Two replicas on one card run the multi-device path (threads, batch hand-out, reassembly).
    out = WORK / "gpu-tiny-llama-2replicas.jsonl"
    two = "cpu,cpu" if DEVICE == "cpu" else "cuda:0,cuda:0"
    skyscore(ROOT / "sample_data/models/tiny-llama", rows, out, "--device", two, "--dtype", "f32",
             "--max-batch-tokens", "2048")
    result[f"tiny-llama/f32/{two}"] = {
        "max_abs_delta_vs_one_replica": max_delta(read_scores(out), read_scores(WORK / "gpu-tiny-llama-f32.jsonl"))}
    # The SQL path (UDF, batching service, pipelined tokenization) on the device, f32.
    out = WORK / "gpu-sql-tiny-llama.jsonl"
    sh([BIN, "sql", "--model", ROOT / "sample_data/models/tiny-llama", "-t",
        f"sft={ROOT / 'sample_data/sft_sample.parquet'}", "--output", out, "--device", DEVICE, "--dtype", "f32", "--no-store",
        "SELECT id, skywork_score(instruction, input, output) AS score FROM sft"])
    sql = read_scores(out)
    hf = read_scores(ROOT / "tests/fixtures/expected/tiny-llama.full.jsonl")
    result["tiny-llama/f32/sql"] = {"rows": len(sql),
                                    "max_abs_delta_vs_transformers_f32": max(abs(sql[k] - hf[k]) for k in sql)}
    ok = all(v.get("max_abs_delta_vs_cpu_f32", 0) <= 1e-4 for k, v in result.items() if k.endswith("/f32"))
    ok &= result["tiny-llama/f32/sql"]["max_abs_delta_vs_transformers_f32"] <= 1e-4
    ok &= all(v["max_abs_delta_vs_transformers_f32"] <= 0.1 for k, v in result.items() if k.endswith("/bf16"))
    result["pass"] = ok
    return result


def make_rows(repeat):
    rows = WORK / f"rows-x{repeat}.jsonl"
    src = [json.loads(l) for l in open(ROOT / "sample_data/sft_sample.jsonl") if l.strip()]
    with open(rows, "w") as f:
        for r in range(repeat):
            for i, row in enumerate(src):
                f.write(json.dumps({"id": r * len(src) + i, "instruction": row["instruction"],
                                    "input": row.get("input") or "", "output": row["output"]}) + "\n")
    return rows


def reference(model, rows, out, sort):
    args = [PY, ROOT / "tests/reference/reference_score.py", "--model", model, "--input", rows, "--output", out,
            "--dtype", "bfloat16", "--device", DEVICE, "--attn", "sdpa", "--warmup"]
    r = sh(args + (["--sort-by-length"] if sort else []))
    return json.loads(r.stderr.strip().splitlines()[-1])


def throughput(shape, repeat, sweep_budgets):
    model = WORK / f"llama-{shape}"
    made = json.loads(sh([PY, ROOT / "bench/gpu/make_llama_shape.py", "--shape", shape,
                          "--tokenizer", ROOT / "dist/llama3-tokenizer", "--out", model]).stdout.strip().splitlines()[-1])
    params = made["parameters"]
    rows = make_rows(repeat)
    # A first, short run loads candle's kernels (the driver compiles their PTX once and caches it).
    sky_warm = skyscore(model, make_rows(1), WORK / f"sky-{shape}-warm.jsonl", "--device", DEVICE, "--dtype", "bf16")
    sky = skyscore(model, rows, WORK / f"sky-{shape}.jsonl", "--device", DEVICE, "--dtype", "bf16")
    sky_s = sky["wall_s"] - sky["load_s"]
    py_in = reference(model, rows, WORK / f"py-{shape}.jsonl", sort=False)
    py_sorted = reference(model, rows, WORK / f"pys-{shape}.jsonl", sort=True)
    assert py_in["tokens"] == sky["tokens"], f"token counts differ: {py_in['tokens']} vs {sky['tokens']}"
    tokens = sky["tokens"]
    a, b, c = (read_scores(WORK / f"{n}-{shape}.jsonl") for n in ("sky", "py", "pys"))
    peak = report["peak_tflops"] * 1e12
    res = {
        "parameters": params, "rows": sky["rows"], "tokens": tokens, "padded_tokens": sky["padded_tokens"],
        "batches": sky["batches"],
        "skyscore_tokens_per_s": round(tokens / sky_s), "skyscore_score_s": round(sky_s, 3),
        "skyscore_model_s": round(sky["model_s"], 3), "skyscore_warmup_320_rows_score_s": round(
            sky_warm["wall_s"] - sky_warm["load_s"], 3),
        "transformers_input_order_tokens_per_s": round(tokens / py_in["score_s"]),
        "transformers_sorted_tokens_per_s": round(tokens / py_sorted["score_s"]),
        "ratio_vs_input_order": round(py_in["score_s"] / sky_s, 2),
        "ratio_vs_sorted": round(py_sorted["score_s"] / sky_s, 2),
        "mfu_skyscore": round(2 * params * tokens / sky_s / peak, 3),
        "mfu_skyscore_forward_only": round(2 * params * tokens / sky["model_s"] / peak, 3),
        "mfu_transformers_sorted": round(2 * params * tokens / py_sorted["score_s"] / peak, 3),
        "max_abs_delta_vs_transformers_input_order": max_delta(a, b),
        "max_abs_delta_vs_transformers_sorted": max_delta(a, c),
        "max_abs_delta_transformers_input_order_vs_sorted": max_delta(b, c),
        "score_stdev": statistics.pstdev(b.values()),
    }
    # Batch budget sweep (same rows): how the token budget trades memory for speed.
    sweep = {}
    for budget in sweep_budgets:
        if elapsed() > BUDGET_S * 0.6:
            break
        s = skyscore(model, rows, WORK / f"sky-{shape}-{budget}.jsonl", "--device", DEVICE, "--dtype", "bf16",
                     "--max-batch-tokens", str(budget))
        sweep[budget] = round(s["tokens"] / (s["wall_s"] - s["load_s"]))
    res["skyscore_tokens_per_s_by_max_batch_tokens"] = sweep
    return res


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    environment()
    parity_fixtures()
    for shape in SHAPES:
        name = f"throughput_llama_{shape}_shape"
        if shape == "8b" and elapsed() > BUDGET_S * 0.5:
            report["steps"][name] = {"skipped": f"time: {elapsed():.0f} s used"}
            continue
        repeat, sweep = (max(1, REPEAT // 4), ()) if shape == "8b" else (REPEAT, (16384, 32768, 131072))
        step(name)(throughput)(shape, repeat, sweep)
    report["elapsed_s"] = round(elapsed(), 1)
    (OUT / "gpu-check.json").write_text(json.dumps(report, indent=1))
    print("\n== summary")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
