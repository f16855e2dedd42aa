//! Helpers shared by the integration tests: paths of the shipped fixtures and readers for
//! the expected scores that tests/reference/make_fixtures.py computed with transformers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use skyscore::Engine;
use skyscore_core::{ScoreRequest, Scorer};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn model_dir(name: &str) -> PathBuf {
    repo().join("sample_data/models").join(name)
}

pub fn fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures").join(rel)
}

#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    pub id: serde_json::Value,
    pub instruction: String,
    pub input: Option<String>,
    pub output: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Expected {
    pub id: serde_json::Value,
    pub score: f64,
    pub num_tokens: usize,
    pub truncated: bool,
    pub input_ids: Vec<u32>,
    pub text: String,
}

pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn parity_rows() -> Vec<Row> {
    read_jsonl(&fixture("parity_rows.jsonl"))
}

pub fn expected(model: &str, case: &str) -> Vec<Expected> {
    read_jsonl(&fixture(&format!("expected/{model}.{case}.jsonl")))
}

pub const MODELS: [&str; 2] = ["tiny-llama", "tiny-qwen3"];

/// Runs the skyscore binary (never offline by accident) with a score store of its own, so no
/// run answers from another's scores (tests of the store pass `--store`).
pub fn skyscore(args: &[&str]) -> Output {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let store = std::env::temp_dir().join(format!("skyscore-test-store-{}-{n}.redb", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_skyscore"))
        .args(args)
        .env_remove("HF_HUB_OFFLINE")
        .env("SKYSCORE_STORE", &store)
        .output()
        .expect("run skyscore");
    let _ = std::fs::remove_file(&store);
    out
}

/// `skyscore score --model MODEL --input INPUT --output OUTPUT EXTRA...`
pub fn score(model: &str, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["score", "--model", model, "--input", p(input), "--output", p(output)];
    args.extend_from_slice(extra);
    skyscore(&args)
}

/// The key-value metadata in a Parquet file's footer, by key.
pub fn parquet_metadata(path: &Path) -> std::collections::BTreeMap<String, String> {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let kv = reader.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
    kv.into_iter().filter_map(|e| Some((e.key, e.value?))).collect()
}

/// `count(*), count(DISTINCT id), count(score)` of the scored table at `path`, as a CSV line
/// ("320,320,320"), read back through `skyscore sql`.
pub fn count_rows_ids_scores(path: &Path) -> String {
    let query = "SELECT count(*), count(DISTINCT id), count(score) FROM scored";
    let run = skyscore(&["sql", "-t", &format!("scored={}", p(path)), "--format", "csv", query]);
    assert!(run.status.success(), "{}", stderr(&run));
    String::from_utf8_lossy(&run.stdout).lines().last().unwrap_or_default().to_string()
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Scores SFT rows through the engine's `Scorer` path (the one the SQL service uses); every row
/// must score.
pub fn scores(engine: &Engine, rows: &[ScoreRequest<'_>]) -> Vec<f32> {
    let conversations: Vec<_> = rows.iter().map(|r| r.conversation()).collect();
    let scored = Scorer::score(engine, &conversations).unwrap();
    scored.rows.into_iter().enumerate().map(|(i, r)| r.unwrap_or_else(|e| panic!("row {i}: {e}")).score).collect()
}
