//! The scoring contract: conversations in, one result per conversation out.

use crate::conversation::Conversation;
use crate::facts::ModelFacts;
use crate::stats::ScoreStats;

/// The score of one conversation and what the model saw of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowScore {
    /// The raw logit of the reward head at the pooled token.
    pub score: f32,
    /// Tokens the model read (after truncation).
    pub tokens: u32,
    /// The conversation was longer than max_length and lost tokens.
    pub truncated: bool,
    /// Tokens of the whole conversation before truncation, when known: the score store keeps
    /// `tokens` and `truncated` only, so a truncated row answered by the store has `None`.
    pub full_tokens: Option<u32>,
}

/// A row's score, or why this row (and only this row) cannot be scored: its prompt does not
/// render, it has no turns, the model gave a non-finite score... The caller decides whether
/// that ends its job (SQL) or gives a null (`skyscore score --skip-invalid`).
pub type RowResult = Result<RowScore, String>;

/// Per-row results in input order, plus what it took to compute them.
#[derive(Debug, Clone, Default)]
pub struct Scored {
    pub rows: Vec<RowResult>,
    pub stats: ScoreStats,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScorerError {
    /// One conversation cannot be scored; `row` counts from 0 in the caller's terms.
    #[error("row {row}: {reason}")]
    Row { row: usize, reason: String },
    /// The model or device failed; nothing was scored.
    #[error("scoring failed: {0}")]
    Engine(String),
}

/// Something that turns conversations into reward scores. Implementations own their device
/// batching; results come back in the order of `conversations`, each independent of the others.
/// What became of the scores a scorer meant to keep in its persistent store. A store that
/// fails to write is set aside for the rest of the run (the run goes on); this says how many
/// scores a rerun will have to compute again, and why.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StoreOutcome {
    /// Scores of this run committed to the store (the figures report it under their own name).
    #[serde(skip)]
    pub committed_rows: usize,
    pub unsaved_rows: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_failure: Option<String>,
}

impl StoreOutcome {
    /// The end-of-run sentence, when scores were lost to a failing store.
    pub fn line(&self) -> Option<String> {
        let failure = self.store_failure.as_ref()?;
        Some(format!(
            "warning: the score store failed ({failure}) and was set aside: {} scores of this run were not saved \
             (a rerun computes them again); scores saved before the failure are kept",
            self.unsaved_rows
        ))
    }
}

pub trait Scorer: Send + Sync {
    /// `Err` only when nothing could be scored (the model or device failed); a row that cannot
    /// be scored is an `Err` in its own slot of [`Scored::rows`].
    fn score(&self, conversations: &[Conversation<'_>]) -> Result<Scored, ScorerError>;

    /// Everything a score depends on besides the conversation (model, revision, template,
    /// max_length, truncation side, dtype): two scorers with equal facts give the same scores.
    /// Written next to the scores (Parquet metadata) and checked by cluster executors.
    fn facts(&self) -> ModelFacts;

    /// Scores not kept because the store failed (none for scorers without a store).
    fn store_outcome(&self) -> StoreOutcome {
        StoreOutcome::default()
    }
}
