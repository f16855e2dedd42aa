//! `Scorer.stats`: the figures of `skyscore score --stats-json`, summed over every call of one
//! scorer, under the same keys, plus the SQL functions' figures when they were used.

use serde::Serialize;
use skyscore_core::distribution::DETAILED_BINS;
use skyscore_core::{DistributionSummary, LengthSummary, RowScore, ScoreDistribution, ScoreStats, TokenLengths};
use skyscore_udf::ServiceStats;

/// What a scorer has done so far (table and list calls; the SQL functions keep their own).
#[derive(Debug, Default)]
pub struct Tally {
    pub rows: usize,
    pub skipped_rows: usize,
    pub stats: ScoreStats,
    /// Seconds inside scoring calls.
    pub scoring_s: f64,
    pub distribution: ScoreDistribution,
    pub lengths: TokenLengths,
}

impl Tally {
    pub fn add_row(&mut self, row: Option<&RowScore>) {
        self.rows += 1;
        match row {
            Some(row) => {
                self.distribution.add(row.score as f64);
                self.lengths.add(row);
            }
            None => self.skipped_rows += 1,
        }
    }
}

/// The fixed facts of the loaded scorer.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub model: String,
    pub device: String,
    pub dtype: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype_reason: Option<String>,
    pub max_length: usize,
    pub batch_size: usize,
    pub load_s: f64,
    #[serde(skip)]
    pub model_limit: Option<usize>,
}

/// The score store: which file, scores saved there by this scorer, scores it failed to save.
#[derive(Debug, Serialize)]
pub struct StoreFigures {
    #[serde(rename = "store")]
    pub path: Option<String>,
    pub committed_rows: usize,
    /// Scores not saved because the store failed (the scorer went on without it), and why.
    #[serde(flatten)]
    pub outcome: skyscore_core::StoreOutcome,
}

#[derive(Serialize)]
struct Summary<'a> {
    rows: usize,
    skipped_rows: usize,
    #[serde(flatten)]
    stats: ScoreStats,
    wall_s: f64,
    tokens_per_s: f64,
    #[serde(flatten)]
    setup: &'a Setup,
    #[serde(flatten)]
    store: &'a StoreFigures,
    #[serde(flatten)]
    distribution: Option<DistributionSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_lengths: Option<LengthSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sql: Option<SqlSummary>,
}

/// The SQL functions' figures (`skyscore sql`'s summary): every evaluation, cache hits, the
/// model's work and the distribution of each function's scores.
#[derive(Serialize)]
struct SqlSummary {
    rows: usize,
    cache_hits: usize,
    #[serde(flatten)]
    stats: ScoreStats,
    score_by_function: std::collections::BTreeMap<String, DistributionSummary>,
}

pub fn to_json(
    tally: &Tally,
    setup: &Setup,
    store: &StoreFigures,
    sql: Option<(ServiceStats, std::collections::BTreeMap<String, ScoreDistribution>)>,
) -> String {
    let summary = Summary {
        rows: tally.rows,
        skipped_rows: tally.skipped_rows,
        stats: tally.stats,
        wall_s: tally.scoring_s,
        tokens_per_s: tally.stats.tokens as f64 / tally.scoring_s.max(1e-9),
        setup,
        store,
        distribution: tally.distribution.summary(DETAILED_BINS),
        token_lengths: tally.lengths.summary(setup.model_limit),
        sql: sql.map(|(stats, distributions)| SqlSummary {
            rows: stats.rows,
            cache_hits: stats.cache_hits,
            stats: stats.model,
            score_by_function: distributions
                .into_iter()
                .filter_map(|(name, d)| d.summary(DETAILED_BINS).map(|s| (name, s)))
                .collect(),
        }),
    };
    serde_json::to_string(&summary).expect("plain data serializes")
}
