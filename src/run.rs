//! What every job of the app shares: the resolved engine (model and options), the one scorer
//! loader that `skyscore sql` and cluster executors use, the end-of-run summary (one line on
//! stderr, the same figures as JSON for `--stats-json`) and the report-path checks.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;
use skyscore_core::{DistributionSummary, LengthSummary, ScoreStats};

pub use skyscore_engine::models::DtypeChoice;
use skyscore_engine::{Engine, EngineOptions};
use skyscore_udf::{Scorer, ScoringService};

use crate::cli::distribution::DETAILED_BINS;

/// The model to load and how to run it.
#[derive(Debug, Clone)]
pub struct ResolvedEngine {
    pub model: String,
    pub options: EngineOptions,
    /// Why `--dtype auto` took the dtype it took (`None` when the dtype was given).
    pub dtype_reason: Option<String>,
}

impl ResolvedEngine {
    /// A scoring service that loads this model when a statement first calls a scoring function
    /// (`skyscore sql`, a cluster executor), with a score cache of `cache_entries` rows.
    pub fn lazy_service(&self, cache_entries: usize) -> Arc<ScoringService> {
        let (model, options) = (self.model.clone(), self.options.clone());
        ScoringService::lazy(
            Box::new(move || {
                tracing::info!(model = %model, "first scoring call: loading the model");
                let engine = Engine::load(&model, &options).map_err(|e| e.to_string())?;
                Ok(Arc::new(engine) as Arc<dyn Scorer>)
            }),
            cache_entries,
        )
    }
}

/// Checks now that the report files written at the end of a run (`--stats-json`, `--plot`) can
/// be written: a long job must not find out after its work.
pub fn check_report_paths(stats_json: Option<&Path>, plot: Option<&Path>) -> Result<()> {
    if let Some(path) = stats_json {
        crate::io::check_writable(path)?;
    }
    if let Some(path) = plot {
        crate::plot::check_plot_path(path)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// Rows read from the input (`skyscore sql`: evaluations of the UDFs).
    pub rows: usize,
    /// Rows answered from the score cache (`skyscore sql`: repeated evaluations and duplicates).
    pub cache_hits: usize,
    /// Rows given a null score because they were invalid (`--skip-invalid`).
    pub skipped_rows: usize,
    /// What the model did: model_rows, tokens, padded_tokens, truncated_rows, batches, model_s.
    #[serde(flatten)]
    pub stats: ScoreStats,
    pub wall_s: f64,
    /// Seconds spent loading the model, part of `wall_s` (`skyscore score`; the SQL shell
    /// loads it lazily).
    pub load_s: Option<f64>,
    pub tokens_per_s: f64,
    pub model: String,
    pub device: String,
    pub dtype: String,
    /// Scores the store failed to keep (the run went on without it).
    #[serde(flatten)]
    pub store: skyscore_core::StoreOutcome,
    /// Why `--dtype auto` chose `dtype`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype_reason: Option<String>,
    pub max_length: usize,
    pub batch_size: usize,
    /// The scores: score_count, score_mean, score_min, score_max, score_quantiles
    /// {"p1": ...}, score_histogram {edges, counts} (`skyscore sql`: when one function scored).
    #[serde(flatten)]
    pub distribution: Option<DistributionSummary>,
    /// Token lengths: p50, p90, p99, max, truncated rows, the most tokens cut, and a suggested
    /// max_length when more than 1% of the rows were cut (`skyscore score`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_lengths: Option<LengthSummary>,
    /// `skyscore sql`: the same per scoring function.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub score_by_function: BTreeMap<String, DistributionSummary>,
}

impl RunSummary {
    /// A summary of a run of `engine`, before any row.
    pub fn new(engine: &ResolvedEngine) -> Self {
        let (model, options) = (&engine.model, &engine.options);
        Self {
            model: model.to_string(),
            device: options.devices.to_string(),
            dtype: options.dtype.to_string(),
            dtype_reason: engine.dtype_reason.clone(),
            max_length: options.max_length,
            batch_size: options.batch_size,
            ..Default::default()
        }
    }

    /// Sets the wall time (and the throughput over it).
    pub fn finish(&mut self, wall_s: f64) {
        self.wall_s = wall_s;
        self.tokens_per_s = self.stats.tokens as f64 / wall_s.max(1e-9);
    }

    pub fn line(&self) -> String {
        let s = &self.stats;
        let mut line = format!(
            "scored {} rows ({} by the model, {} from the store, {} duplicates, {} skipped) · {} tokens ({} padded) · {} truncated · {:.2} s · {:.0} tokens/s",
            self.rows,
            s.model_rows,
            s.store_hits,
            s.duplicate_rows,
            self.skipped_rows,
            s.tokens,
            s.padded_tokens,
            s.truncated_rows,
            self.wall_s,
            self.tokens_per_s
        );
        if let Some(reason) = &self.dtype_reason {
            line.push_str(&format!("\ndtype {} ({reason})", self.dtype));
        }
        if let Some(lengths) = &self.token_lengths {
            line.push('\n');
            line.push_str(&lengths.line(self.max_length));
        }
        if let Some(store) = self.store.line() {
            line.push('\n');
            line.push_str(&store);
        }
        line
    }

    /// The summary of `skyscore sql`, where `rows` counts every evaluation of the UDFs.
    pub fn sql_line(&self) -> String {
        let s = &self.stats;
        let store = self.store.line().map(|l| format!("\n{l}")).unwrap_or_default();
        format!(
            "skywork_score: {} rows evaluated, {} scored by the model, {} from cache, {} from the store · {} tokens ({} padded) · {} truncated · {:.2} s · {:.0} tokens/s",
            self.rows,
            s.model_rows,
            self.cache_hits,
            s.store_hits,
            s.tokens,
            s.padded_tokens,
            s.truncated_rows,
            self.wall_s,
            self.tokens_per_s
        ) + &store
    }

    /// The figures of a SQL scoring service so far: every evaluation, cache hits, the model's
    /// work, and the score distribution of each function (`skyscore sql`, cluster executors).
    pub fn of_service(service: &ScoringService, engine: &ResolvedEngine, wall_s: f64) -> Self {
        let stats = service.stats();
        let mut summary = RunSummary::new(engine);
        summary.rows = stats.rows;
        summary.cache_hits = stats.cache_hits;
        summary.stats = stats.model;
        summary.store = stats.store;
        summary.finish(wall_s);
        for (function, d) in service.distributions() {
            if let Some(s) = d.summary(DETAILED_BINS) {
                summary.score_by_function.insert(function, s);
            }
        }
        if summary.score_by_function.len() == 1 {
            summary.distribution = summary.score_by_function.values().next().cloned();
        }
        summary
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// [`write_json`](Self::write_json) through a temporary sibling, so a reader never sees a
    /// half-written file.
    pub fn write_json_atomically(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        crate::io::paths::write_atomically(path, text.as_bytes())
    }
}
