//! The scoring contract: conversations in, one result per conversation out.

use crate::conversation::Conversation;
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

impl Scored {
    /// The first row that could not be scored, with its reason.
    pub fn first_error(&self) -> Option<(usize, &str)> {
        self.rows.iter().enumerate().find_map(|(i, r)| r.as_ref().err().map(|e| (i, e.as_str())))
    }
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
pub trait Scorer: Send + Sync {
    /// `Err` only when nothing could be scored (the model or device failed); a row that cannot
    /// be scored is an `Err` in its own slot of [`Scored::rows`].
    fn score(&self, conversations: &[Conversation<'_>]) -> Result<Scored, ScorerError>;

    /// Names everything a score depends on besides the conversation (model, revision, template,
    /// max_length, truncation side, dtype): two scorers with the same fingerprint give the same
    /// scores.
    fn fingerprint(&self) -> String;

    /// Key-value facts worth recording next to scores (written into Parquet metadata).
    fn metadata(&self) -> Vec<(String, String)> {
        vec![("skyscore.fingerprint".into(), self.fingerprint())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_error_names_the_row() {
        let ok = RowScore { score: 1.0, tokens: 3, truncated: false };
        let scored = Scored { rows: vec![Ok(ok), Err("bad".into()), Err("worse".into())], ..Default::default() };
        assert_eq!(scored.first_error(), Some((1, "bad")));
        assert_eq!(Scored { rows: vec![Ok(ok)], ..Default::default() }.first_error(), None);
    }
}
