//! The shipped fixtures: model and fixture paths, the parity rows, and the expected scores that
//! tests/reference/make_fixtures.py computed with transformers. Shared by the engine's tests and
//! (through `#[path]`) the app's.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use skyscore_core::{ScoreRequest, Scorer};
use skyscore_engine::Engine;

/// The repository root (this file serves tests of the root crate and of `engine/`). Read from
/// cargo's run-time `CARGO_MANIFEST_DIR` first: a test binary built in another checkout that
/// shares the target folder (CI's fresh clones) still finds this checkout's fixtures.
pub fn repo() -> PathBuf {
    let runtime = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let here = runtime.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let here = here.as_path();
    if here.join("sample_data").is_dir() {
        here.to_path_buf()
    } else {
        here.parent().expect("engine/ sits in the repository").to_path_buf()
    }
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

/// Scores SFT rows through the engine's `Scorer` path (the one the SQL service uses); every row
/// must score.
pub fn scores(engine: &Engine, rows: &[ScoreRequest<'_>]) -> Vec<f32> {
    let conversations: Vec<_> = rows.iter().map(|r| r.conversation()).collect();
    let scored = Scorer::score(engine, &conversations).unwrap();
    scored.rows.into_iter().enumerate().map(|(i, r)| r.unwrap_or_else(|e| panic!("row {i}: {e}")).score).collect()
}
