//! The `skyscore` binary end to end: formats, ids, order, config, stats, and clear errors
//! (non-zero exit, the row/column/file named, never a panic) on bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Float32Type, Int64Type, UInt32Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Fails the test unless the run failed cleanly with `needle` in its message.
fn assert_clean_failure(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure, got success; stderr: {err}");
    // 1: the run failed; 2: clap refused a flag value (unknown dtype or device) before it began.
    assert!(matches!(out.status.code(), Some(1 | 2)), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

/// No temporary output (`.NAME.skyscore-HOST-PID-N.tmp.EXT`) is left behind.
fn assert_no_temporary_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".skyscore-"), "temporary file left: {name}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tiny_llama() -> String {
    model_dir("tiny-llama").to_str().unwrap().to_string()
}

/// Expected full-length scores of the sample rows, by id.
fn expected_sample_scores(model: &str) -> std::collections::HashMap<i64, f64> {
    expected(model, "full").into_iter().filter_map(|e| e.id.as_i64().map(|id| (id, e.score))).collect()
}

/// Checks a `score` output of the 320 sample rows: every row, in input order, with the
/// transformers score of tiny-llama. Returns the lines for further checks.
fn assert_sample_scores_in_input_order(out: &Path) -> Vec<serde_json::Value> {
    let expected = expected_sample_scores("tiny-llama");
    let lines: Vec<serde_json::Value> = read_jsonl(out);
    assert_eq!(lines.len(), 320);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["id"].as_i64(), Some(i as i64), "input order");
        let score = line["score"].as_f64().unwrap();
        assert!((score - expected[&(i as i64)]).abs() <= 1e-4, "row {i}: {score} vs {}", expected[&(i as i64)]);
    }
    lines
}

#[test]
fn scores_sample_parquet_to_jsonl_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scores.jsonl");
    let stats = dir.path().join("stats.json");
    let input = repo().join("sample_data/sft_sample.parquet");
    let run = skyscore(&[
        "score",
        "--model",
        &tiny_llama(),
        "--input",
        p(&input),
        "--output",
        p(&out),
        "--stats-json",
        p(&stats),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("scored 320 rows"), "{}", stderr(&run));
    for line in assert_sample_scores_in_input_order(&out) {
        assert_eq!(line.as_object().unwrap().len(), 2, "only id and score: {line}");
    }
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    for key in ["rows", "model_rows", "tokens", "padded_tokens", "truncated_rows", "wall_s", "load_s", "tokens_per_s"] {
        assert!(stats.get(key).is_some(), "stats json lacks {key}: {stats}");
    }
    assert_eq!(stats["rows"], 320);
    assert_eq!(stats["model_rows"], 320);
    assert_eq!((stats["dtype"].as_str(), stats["device"].as_str()), (Some("f32"), Some("cpu")), "{stats}");
    assert_eq!(stats["truncated_rows"], 0);
    let tokens = stats["tokens"].as_u64().unwrap();
    assert!(stats["padded_tokens"].as_u64().unwrap() >= tokens);
    assert_no_temporary_files(dir.path());
}

/// Many small windows (each tokenized while the previous one is scored) and two model replicas
/// sharing the batches: rows still come out in input order, each with its own score.
#[test]
fn pipelined_windows_on_two_replicas_keep_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scores.jsonl");
    let input = repo().join("sample_data/sft_sample.parquet");
    let args = ["--window", "7", "--device", "cpu,cpu", "--batch-size", "3", "--no-progress"];
    let run = skyscore(
        &[&["score", "--model", &tiny_llama(), "--input", p(&input), "--output", p(&out)][..], &args].concat(),
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert_sample_scores_in_input_order(&out);
}

#[test]
fn jsonl_in_parquet_out_keeps_columns_and_flags_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scored.parquet");
    let input = repo().join("sample_data/sft_sample.jsonl");
    let run = skyscore(&[
        "score",
        "--model",
        &tiny_llama(),
        "--input",
        p(&input),
        "--output",
        p(&out),
        "--keep-columns",
        "--max-length",
        "64",
        "--batch-size",
        "5",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let file = std::fs::File::open(&out).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let kv = builder.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
    assert!(kv.iter().any(|k| k.key == "skyscore.max_length" && k.value.as_deref() == Some("64")), "{kv:?}");
    let batches: Vec<_> = builder.build().unwrap().collect::<Result<_, _>>().unwrap();
    let batch = datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    // JSON schema inference orders the input columns by name; the added ones follow.
    assert_eq!(names, ["id", "input", "instruction", "output", "source", "score", "num_tokens", "truncated"]);
    assert_eq!(batch.num_rows(), 320);
    let ids = batch.column_by_name("id").unwrap().as_primitive::<Int64Type>();
    let tokens = batch.column_by_name("num_tokens").unwrap().as_primitive::<UInt32Type>();
    let truncated = batch.column_by_name("truncated").unwrap().as_boolean();
    let scores = batch.column_by_name("score").unwrap().as_primitive::<Float32Type>();
    let expected: std::collections::HashMap<i64, f64> =
        expected("tiny-llama", "right64").into_iter().filter_map(|e| e.id.as_i64().map(|id| (id, e.score))).collect();
    let mut n_truncated = 0;
    for i in 0..batch.num_rows() {
        assert_eq!(ids.value(i), i as i64);
        assert!(tokens.value(i) <= 64);
        if truncated.value(i) {
            n_truncated += 1;
            assert_eq!(tokens.value(i), 64);
        }
        if let Some(exp) = expected.get(&(i as i64)) {
            assert!((scores.value(i) as f64 - exp).abs() <= 1e-4, "row {i}");
        }
    }
    assert!(n_truncated > 100, "most sample rows exceed 64 tokens ({n_truncated})");
    assert!(stderr(&run).contains(&format!("{n_truncated} truncated")), "{}", stderr(&run));
}

#[test]
fn json_array_with_string_ids_and_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "rows.json",
        r#"[{"key": "a", "instruction": "Say hi.", "output": "Hi!"},
            {"key": "b", "instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}]"#,
    );
    let config = write(
        dir.path(),
        "scorer.yaml",
        &format!(
            "name: SkyworkRewardScorer\nmodel: {}\nmax_length: 4096\nbatch_size: 16\n",
            model_dir("tiny-qwen3").display()
        ),
    );
    let out = dir.path().join("out.jsonl");
    let run =
        skyscore(&["score", "--config", p(&config), "--input", p(&input), "--output", p(&out), "--id-column", "key"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let lines: Vec<serde_json::Value> = read_jsonl(&out);
    assert_eq!(lines[0]["id"], "a");
    assert_eq!(lines[1]["id"], "b");
    // The same rows are edge cases 0 and 2 of the parity fixtures.
    let exp = expected("tiny-qwen3", "full");
    let by_id = |id: &str| exp.iter().find(|e| e.id == id).unwrap().score;
    assert!((lines[0]["score"].as_f64().unwrap() - by_id("edge-0")).abs() <= 1e-4);
    assert!((lines[1]["score"].as_f64().unwrap() - by_id("edge-2")).abs() <= 1e-4);
}

/// JSON ids that mix numbers and strings come out as strings, each row's own.
#[test]
fn mixed_number_and_string_ids_are_read_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "mixed.jsonl",
        "{\"id\": 7, \"instruction\": \"a\", \"output\": \"b\"}\n{\"id\": \"edge-1\", \"instruction\": \"c\", \"output\": \"d\"}\n",
    );
    let out = dir.path().join("o.jsonl");
    let run =
        skyscore(&["score", "--model", &tiny_llama(), "--input", p(&input), "--output", p(&out), "--no-progress"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let lines: Vec<serde_json::Value> = read_jsonl(&out);
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["7", "edge-1"]);
    assert!(lines.iter().all(|l| l["score"].is_f64()));
}

#[test]
fn null_instruction_is_an_error_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "rows.jsonl",
        "{\"id\": 7, \"instruction\": \"ok\", \"output\": \"fine\"}\n{\"id\": 8, \"instruction\": null, \"output\": \"x\"}\n",
    );
    let out = dir.path().join("out.jsonl");
    let run = skyscore(&["score", "--model", &tiny_llama(), "--input", p(&input), "--output", p(&out)]);
    assert_clean_failure(&run, "row 1 (id 8): column `instruction` is NULL");
    assert!(!out.exists(), "no output on failure");
    assert_no_temporary_files(dir.path());
}

#[test]
fn skip_invalid_gives_null_scores_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "rows.jsonl",
        "{\"instruction\": \"ok\", \"input\": null, \"output\": \"fine\"}\n{\"instruction\": \"no output\", \"output\": null}\n",
    );
    let out = dir.path().join("out.jsonl");
    let stats = dir.path().join("stats.json");
    let run = skyscore(&[
        "score",
        "--model",
        &tiny_llama(),
        "--input",
        p(&input),
        "--output",
        p(&out),
        "--skip-invalid",
        "--stats-json",
        p(&stats),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let lines: Vec<serde_json::Value> = read_jsonl(&out);
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["score"].is_f64());
    assert!(lines[1]["score"].is_null(), "{}", lines[1]);
    assert_eq!(lines[1]["id"], 1);
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(stats["skipped_rows"], 1);
    assert_eq!(stats["model_rows"], 1);
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let model = tiny_llama();
    let cases: Vec<(PathBuf, &str)> = vec![
        (write(dir.path(), "missing.jsonl", "{\"instruction\": \"a\", \"answer\": \"b\"}\n"), "no column `output`"),
        (
            write(dir.path(), "types.jsonl", "{\"instruction\": 5, \"output\": \"b\"}\n"),
            "column `instruction` has type Int64",
        ),
        (write(dir.path(), "broken.jsonl", "{\"instruction\": \"a\", \"output\": \n"), "broken.jsonl"),
        (write(dir.path(), "notobjects.json", "[1, 2]"), "element 0 of the JSON array is not an object"),
        (write(dir.path(), "garbage.parquet", "not parquet"), "garbage.parquet"),
        (write(dir.path(), "table.csv", "a,b\n"), "unknown input format"),
        (dir.path().join("absent.jsonl"), "absent.jsonl"),
    ];
    for (input, needle) in cases {
        let run = skyscore(&["score", "--model", &model, "--input", p(&input), "--output", p(&out)]);
        assert_clean_failure(&run, needle);
    }
    let good = write(dir.path(), "good.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n");
    let run = skyscore(&["score", "--model", &model, "--input", p(&good), "--output", p(&dir.path().join("o.txt"))]);
    assert_clean_failure(&run, "unknown output format");
    let run = skyscore(&["score", "--model", &model, "--input", p(&good), "--output", p(&out), "--device", "tpu"]);
    assert_clean_failure(&run, "unknown device `tpu`");
    let run =
        skyscore(&["score", "--model", &model, "--input", p(&good), "--output", p(&out), "--device", "cpu,cuda:1"]);
    assert_clean_failure(&run, "mixes cpu and cuda");
    // CI builds have no CUDA: asking for a GPU says how to get a build that has it.
    if !cfg!(feature = "cuda") {
        let run = skyscore(&["score", "--model", &model, "--input", p(&good), "--output", p(&out), "--device", "cuda"]);
        assert_clean_failure(&run, "built without CUDA (build it with scripts/build-cuda.sh)");
    }
    let run = skyscore(&["score", "--model", &model, "--input", p(&good), "--output", p(&out), "--dtype", "f8"]);
    assert_clean_failure(&run, "unknown dtype `f8`");
}

/// Copies a fixture checkpoint so a test can break it.
fn copy_model(name: &str, to: &Path) -> PathBuf {
    let dst = to.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    dst
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn broken_checkpoints_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "rows.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n");
    let out = dir.path().join("out.jsonl");
    let run_with = |model: &Path| skyscore(&["score", "--model", p(model), "--input", p(&input), "--output", p(&out)]);

    let m = copy_model("tiny-qwen3", &dir.path().join("arch"));
    edit_json(&m.join("config.json"), |c| c["architectures"] = serde_json::json!(["BertForSequenceClassification"]));
    assert_clean_failure(&run_with(&m), "LlamaForSequenceClassification, Qwen3ForSequenceClassification");

    let m = copy_model("tiny-qwen3", &dir.path().join("labels"));
    edit_json(&m.join("config.json"), |c| {
        c["id2label"] = serde_json::json!({"0": "A", "1": "B"});
    });
    assert_clean_failure(&run_with(&m), "num_labels is 2");

    let m = copy_model("tiny-qwen3", &dir.path().join("vocab"));
    edit_json(&m.join("config.json"), |c| c["vocab_size"] = serde_json::json!(100));
    assert_clean_failure(
        &run_with(&m),
        "config.json: `pad_token_id` is 1200; must be a token id below vocab_size (100)",
    );
    edit_json(&m.join("config.json"), |c| {
        for id in ["pad_token_id", "bos_token_id", "eos_token_id"] {
            c[id] = serde_json::Value::Null;
        }
    });
    assert_clean_failure(&run_with(&m), "the model's embedding has only 100 rows");

    let m = copy_model("tiny-qwen3", &dir.path().join("noweights"));
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    assert_clean_failure(&run_with(&m), "neither model.safetensors nor model.safetensors.index.json");

    let m = copy_model("tiny-llama", &dir.path().join("shard"));
    std::fs::remove_file(m.join("model-00002-of-00003.safetensors")).unwrap();
    assert_clean_failure(&run_with(&m), "model-00002-of-00003.safetensors");

    let m = copy_model("tiny-qwen3", &dir.path().join("truncweights"));
    std::fs::write(m.join("model.safetensors"), b"\x02\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
    assert_clean_failure(&run_with(&m), "loading Qwen3ForSequenceClassification weights");

    let m = copy_model("tiny-qwen3", &dir.path().join("badheader"));
    std::fs::write(m.join("model.safetensors"), b"\x08\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
    assert_clean_failure(&run_with(&m), "reading weights of");

    let m = copy_model("tiny-qwen3", &dir.path().join("badjson"));
    std::fs::write(m.join("config.json"), "{ not json").unwrap();
    assert_clean_failure(&run_with(&m), "config.json is not valid JSON");

    let m = copy_model("tiny-qwen3", &dir.path().join("notok"));
    std::fs::remove_file(m.join("tokenizer.json")).unwrap();
    assert_clean_failure(&run_with(&m), "has no tokenizer.json");

    assert_clean_failure(&run_with(&dir.path().join("nothing-here")), "nothing-here does not exist");
}

/// Overwrites tensor `name` of a safetensors file with `value` (f32 tensors only).
fn fill_tensor(file: &Path, name: &str, value: f32) {
    let mut bytes = std::fs::read(file).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header[name]["dtype"], "F32", "{name}");
    let offsets = &header[name]["data_offsets"];
    let (start, end) = (offsets[0].as_u64().unwrap() as usize, offsets[1].as_u64().unwrap() as usize);
    let data = &mut bytes[8 + header_len + start..8 + header_len + end];
    for chunk in data.chunks_exact_mut(4) {
        chunk.copy_from_slice(&value.to_le_bytes());
    }
    std::fs::write(file, bytes).unwrap();
}

/// A checkpoint whose score head is NaN gives NaN logits: every row is a row error that names
/// it (or a null with --skip-invalid), and nothing non-finite reaches the output or the store.
#[test]
fn non_finite_scores_are_row_errors_and_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model("tiny-llama", dir.path());
    fill_tensor(&model.join("model-00003-of-00003.safetensors"), "score.weight", f32::NAN);
    let input = repo().join("sample_data/sft_sample.parquet");
    let (out, store) = (dir.path().join("out.jsonl"), dir.path().join("store.redb"));
    let run = score(p(&model), &input, &out, &["--store", p(&store)]);
    assert_clean_failure(&run, "the model gave a non-finite score (NaN)");
    assert!(stderr(&run).contains("row "), "{}", stderr(&run));
    assert!(!out.exists());

    let stats = dir.path().join("stats.json");
    let run = score(p(&model), &input, &out, &["--store", p(&store), "--skip-invalid", "--stats-json", p(&stats)]);
    assert!(run.status.success(), "{}", stderr(&run));
    let rows: Vec<serde_json::Value> = read_jsonl(&out);
    assert_eq!(rows.len(), 320);
    assert!(rows.iter().all(|r| r["score"].is_null()), "{:?}", rows[0]);
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(s["skipped_rows"], 320, "{s}");
    assert_eq!(s["store_hits"], 0, "no NaN was stored by the first run: {s}");
    let info = skyscore(&["store", "info", "--store", p(&store)]);
    assert!(String::from_utf8_lossy(&info.stdout).contains(": 0 scores"), "{}", String::from_utf8_lossy(&info.stdout));
}

/// A hub id resolves through a Hugging Face cache laid out as huggingface_hub lays it out
/// (blobs + snapshots + refs), offline, by branch and by commit; a missing repo names the cache.
#[test]
fn hub_ids_resolve_offline_from_the_cache() {
    let hf_home = tempfile::tempdir().unwrap();
    let repo_dir = hf_home.path().join("hub/models--Skywork--tiny-reward");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(model_dir("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        let blob = repo_dir.join("blobs").join(format!("blob-{}", entry.file_name().to_string_lossy()));
        std::fs::copy(entry.path(), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snapshot.join(entry.file_name())).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let input = repo().join("sample_data/sft_sample.parquet");
    let expected = expected_sample_scores("tiny-llama");
    for spec in ["Skywork/tiny-reward", &format!("Skywork/tiny-reward@{commit}")] {
        let out = dir.path().join("out.jsonl");
        let run = command()
            .args(["score", "--model", spec, "--input", p(&input), "--output", p(&out)])
            .env("HF_HOME", hf_home.path())
            .env_remove("HF_HUB_CACHE")
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(run.status.success(), "{spec}: {}", stderr(&run));
        let lines: Vec<serde_json::Value> = read_jsonl(&out);
        assert_eq!(lines.len(), 320);
        assert!((lines[5]["score"].as_f64().unwrap() - expected[&5]).abs() <= 1e-4);
    }
    // Online mode with an unreachable hub: everything required is cached, and the optional files
    // the snapshot lacks (chat_template.jinja) do not stop the run.
    let out = dir.path().join("online.jsonl");
    let run = command()
        .args(["score", "--model", "Skywork/tiny-reward", "--input", p(&input), "--output", p(&out)])
        .env("HF_HOME", hf_home.path())
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(read_jsonl::<serde_json::Value>(&out).len(), 320);

    let run = command()
        .args(["score", "--model", "Skywork/absent", "--input", p(&input), "--output", p(&dir.path().join("x.jsonl"))])
        .env("HF_HOME", hf_home.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_clean_failure(&run, "is not in the Hugging Face cache");
}

#[test]
fn help_explains_the_command() {
    let run = skyscore(&["score", "--help"]);
    assert!(run.status.success());
    let help = String::from_utf8_lossy(&run.stdout);
    for needle in ["--keep-columns", "--skip-invalid", "HF_HUB_OFFLINE", "--max-length", "--stats-json"] {
        assert!(help.contains(needle), "help lacks {needle}");
    }
}

/// A shared output folder: a live temporary output of a process on another machine (its PID
/// means nothing here) survives a run on this machine writing the same target.
#[test]
fn another_hosts_temporary_output_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let theirs = dir.path().join(".out.skyscore-other.machine-999999-0.tmp.jsonl");
    std::fs::write(&theirs, "another machine's partial output").unwrap();
    let input = repo().join("sample_data/sft_sample.parquet");
    let run = score(&tiny_llama(), &input, &out, &["--no-store", "--no-progress"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "another machine's partial output");
}

/// Errors are messages: no stack backtrace under them, whatever RUST_BACKTRACE says.
#[test]
fn errors_carry_no_backtrace_with_rust_backtrace_set() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(repo().join("sample_data/models/tiny-llama")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    // Valid numbers that disagree with the weights: the first MLP tensor is refused (a candle error,
    // which captures a backtrace when asked to).
    let config = model.join("config.json");
    let text =
        std::fs::read_to_string(&config).unwrap().replace("\"intermediate_size\": 160", "\"intermediate_size\": 96");
    std::fs::write(&config, text).unwrap();
    let input = repo().join("sample_data/sft_sample.parquet");
    let out = dir.path().join("out.jsonl");
    for backtrace in ["1", "full"] {
        let run = command()
            .env("RUST_BACKTRACE", backtrace)
            .args(["score", "--model", p(&model), "--input", p(&input), "--output", p(&out), "--no-store"])
            .output()
            .unwrap();
        let err = stderr(&run);
        assert!(!run.status.success());
        assert!(err.contains("mlp.gate_proj.weight: shape [160, 64], expected [96, 64]"), "{err}");
        assert!(!err.to_lowercase().contains("backtrace") && !err.contains("  0: "), "{err}");
    }
}

/// A chat template is a program from the checkpoint: one that would loop 10^10 times is stopped
/// for each row with an error naming the template, never a hang.
#[test]
fn a_hostile_chat_template_is_a_row_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_model("tiny-llama", dir.path());
    edit_json(&m.join("tokenizer_config.json"), |c| {
        c["chat_template"] =
            serde_json::json!("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x");
    });
    let input = write(dir.path(), "rows.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n");
    let out = dir.path().join("out.jsonl");
    let started = std::time::Instant::now();
    let run = score(p(&m), &input, &out, &["--no-store"]);
    assert_clean_failure(&run, "ran past its work limit of 10000000 steps");
    assert!(stderr(&run).contains("row 0"), "{}", stderr(&run));
    let run = score(p(&m), &input, &out, &["--no-store", "--skip-invalid"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "took {:?}", started.elapsed());
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "{\"id\":0,\"score\":null}");
}
