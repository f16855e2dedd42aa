//! The end-of-run summary: one line on stderr, and the same figures as JSON for
//! `--stats-json`.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// Rows read from the input.
    pub rows: usize,
    /// Rows the model actually ran.
    pub model_rows: usize,
    /// Rows answered from the score cache (`skyscore sql`: repeated evaluations and duplicates).
    pub cache_hits: usize,
    /// Rows given a null score because they were invalid (`--skip-invalid`).
    pub skipped_rows: usize,
    /// Tokens fed to the model (after truncation, without padding).
    pub tokens: usize,
    /// Tokens the model computed, padding included.
    pub padded_tokens: usize,
    pub truncated_rows: usize,
    pub batches: usize,
    pub wall_s: f64,
    /// Seconds spent loading the model, part of `wall_s` (`skyscore score`; the SQL shell
    /// loads it lazily).
    pub load_s: Option<f64>,
    pub tokens_per_s: f64,
    /// Seconds spent inside the model's scoring calls.
    pub model_s: f64,
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub max_length: usize,
    pub batch_size: usize,
}

impl RunSummary {
    pub fn line(&self) -> String {
        format!(
            "scored {} rows ({} by the model, {} skipped) · {} tokens ({} padded) · {} truncated · {:.2} s · {:.0} tokens/s",
            self.rows,
            self.model_rows,
            self.skipped_rows,
            self.tokens,
            self.padded_tokens,
            self.truncated_rows,
            self.wall_s,
            self.tokens_per_s
        )
    }

    /// The summary of `skyscore sql`, where `rows` counts every evaluation of the UDFs.
    pub fn sql_line(&self) -> String {
        format!(
            "skywork_score: {} rows evaluated, {} scored by the model, {} from cache · {} tokens ({} padded) · {} truncated · {:.2} s · {:.0} tokens/s",
            self.rows,
            self.model_rows,
            self.cache_hits,
            self.tokens,
            self.padded_tokens,
            self.truncated_rows,
            self.wall_s,
            self.tokens_per_s
        )
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}
