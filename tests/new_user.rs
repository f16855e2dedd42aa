//! Failures a new user runs into, each with a clear message, a non-zero exit and no lost data.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn tiny_llama() -> String {
    p(&model_dir("tiny-llama")).to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn fails_with(out: &std::process::Output, needle: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected a failure: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

fn rows_jsonl(n: usize) -> String {
    (0..n).map(|i| format!("{{\"id\": {i}, \"instruction\": \"Count to {i}.\", \"output\": \"{i}\"}}\n")).collect()
}

#[test]
fn an_output_that_is_the_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "d.jsonl", &rows_jsonl(3));
    std::os::unix::fs::symlink(&data, dir.path().join("link.jsonl")).unwrap();
    for output in [data.clone(), dir.path().join("link.jsonl"), dir.path().join("./sub/../d.jsonl")] {
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        let run = score(&tiny_llama(), &data, &output, &[]);
        fails_with(&run, "is the input file");
        assert_eq!(std::fs::read_to_string(&data).unwrap(), rows_jsonl(3), "the dataset is untouched");
    }
}

#[test]
fn failing_sql_writes_keep_the_existing_target() {
    let dir = tempfile::tempdir().unwrap();
    let table = format!("sft={}", p(&repo().join("sample_data/sft_sample.parquet")));
    let target = write(dir.path(), "kept.parquet", "the previous result");
    // Fails at run time, after the model has scored rows: an integer division by zero.
    let failing = "SELECT id, skywork_score(instruction, input, output) AS s, 1 / (id - id) AS boom FROM sft";
    let run = skyscore(&["sql", "--model", &tiny_llama(), "-t", &table, "--output", p(&target), failing]);
    fails_with(&run, "Divide by zero");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "the previous result");
    let copy = format!("COPY ({failing}) TO '{}' STORED AS PARQUET", p(&target));
    let run = skyscore(&["sql", "--model", &tiny_llama(), "-t", &table, &copy]);
    fails_with(&run, "was left as it was");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "the previous result");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".skyscore-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn two_runs_writing_one_output_never_mix_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.jsonl", &rows_jsonl(40));
    let b = write(dir.path(), "b.jsonl", &rows_jsonl(41));
    let out = dir.path().join("out.jsonl");
    let spawn = |input: &Path| {
        let mut run = common::command();
        let child = run
            .args(["score", "--model", &tiny_llama(), "--input", p(input), "--output", p(&out), "--no-store"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (child, run)
    };
    let ((ra, _a), (rb, _b)) = (spawn(&a), spawn(&b));
    for child in [ra, rb] {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let rows: Vec<serde_json::Value> = read_jsonl(&out);
    assert!(rows.len() == 40 || rows.len() == 41, "one run's complete output, not a mixture: {}", rows.len());
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (0..rows.len() as i64).collect::<Vec<_>>());
}

#[test]
fn bad_json_lines_are_named_and_skippable() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = rows_jsonl(10);
    text.push_str("{\"id\": 10, \"instruction\": \"broken\", \"output\": \n"); // line 11
    text.push_str("{\"id\": 11, \"instruction\": \"\\ud800\", \"output\": \"x\"}\n"); // line 12: lone surrogate
    text.push_str(&rows_jsonl(1).replace("\"id\": 0", "\"id\": 12"));
    let input = write(dir.path(), "d.jsonl", &text);
    let out = dir.path().join("o.jsonl");
    let run = score(&tiny_llama(), &input, &out, &[]);
    fails_with(&run, "d.jsonl: line 11: not valid JSON");
    let stats = dir.path().join("s.json");
    let run = score(&tiny_llama(), &input, &out, &["--skip-invalid", "--stats-json", p(&stats)]);
    assert!(run.status.success(), "{}", stderr(&run));
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(s["skipped_rows"], 2, "{s}");
    let ids: Vec<i64> = read_jsonl::<serde_json::Value>(&out).iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12]);
}

#[test]
fn an_empty_conversation_is_an_invalid_row() {
    let table = format!("sft={}", p(&repo().join("sample_data/sft_sample.parquet")));
    let run = skyscore(&["sql", "--model", &tiny_llama(), "-t", &table, "SELECT skywork_score_chat('[]')"]);
    fails_with(&run, "the conversation has no turns");
}

#[test]
fn a_max_length_beyond_the_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "d.jsonl", &rows_jsonl(2));
    let out = dir.path().join("o.jsonl");
    let run = score(&tiny_llama(), &input, &out, &["--max-length", "1000000"]);
    fails_with(&run, "beyond what");
    assert!(stderr(&run).contains("max_position_embeddings 8192"), "{}", stderr(&run));
}

#[test]
fn logs_on_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "d.jsonl", &rows_jsonl(2));
    let out = dir.path().join("o.jsonl");
    let run = skyscore(&["-vv", "score", "--model", &tiny_llama(), "--input", p(&input), "--output", p(&out)]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("model loaded"), "logging is on");
    assert!(!stderr(&run).contains('\u{1b}'), "no ANSI escapes in redirected logs");
}

#[test]
fn a_row_too_long_for_the_memory_limit_is_refused_before_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let long = "word ".repeat(3000);
    let text = format!(
        "{{\"id\": 0, \"instruction\": \"short\", \"output\": \"ok\"}}\n{{\"id\": 1, \"instruction\": \"{long}\", \"output\": \"x\"}}\n"
    );
    let input = write(dir.path(), "d.jsonl", &text);
    let out = dir.path().join("o.jsonl");
    // The tiny model needs ~4 KB of activations per token, plus 256 MiB for attention blocks:
    // 0.3 GB leaves room for ~8,000 tokens (the long row has ~3,000), 0.27 GB for ~390.
    let model = tiny_llama();
    let run_with = |limit: &str| score(&model, &input, &out, &["--max-memory", limit]);
    let run = run_with("0.3");
    assert!(run.status.success(), "{}", stderr(&run));
    let run = run_with("0.27");
    fails_with(&run, "row 1 (id 1): its");
    assert!(stderr(&run).contains("over the memory limit of 0.3 GB (--max-memory)"), "{}", stderr(&run));
}
