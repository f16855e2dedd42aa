//! A stand-in scorer for the unit tests: deterministic scores from the conversation text,
//! a row that always fails, and a count of the rows it was asked to score.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use skyscore_core::{Conversation, ModelFacts, RowScore, ScoreStats, Scored, Scorer, ScorerError};

pub struct FakeScorer {
    rows: AtomicUsize,
    fail_all: bool,
}

impl FakeScorer {
    /// Content of a turn that this scorer refuses, as an engine refuses an unrenderable prompt.
    pub const BAD: &'static str = "unrenderable";
    pub const BAD_REASON: &'static str = "the chat template failed to render";

    pub fn new() -> Arc<Self> {
        Arc::new(Self { rows: AtomicUsize::new(0), fail_all: false })
    }

    pub fn failing() -> Arc<Self> {
        Arc::new(Self { rows: AtomicUsize::new(0), fail_all: true })
    }

    /// The score this scorer gives: total characters plus turns / 10.
    pub fn score_of(conversation: &Conversation<'_>) -> f32 {
        conversation.iter().map(|t| t.role.len() + t.content.len()).sum::<usize>() as f32
            + conversation.len() as f32 / 10.0
    }

    /// Rows passed to `score` so far.
    pub fn rows_scored(&self) -> usize {
        self.rows.load(Ordering::Relaxed)
    }
}

impl Scorer for FakeScorer {
    fn score(&self, conversations: &[Conversation<'_>]) -> Result<Scored, ScorerError> {
        if self.fail_all {
            return Err(ScorerError::Engine("device lost".into()));
        }
        self.rows.fetch_add(conversations.len(), Ordering::Relaxed);
        let rows: Vec<_> = conversations
            .iter()
            .map(|c| {
                if c.iter().any(|t| t.content == Self::BAD) {
                    Err(Self::BAD_REASON.to_string())
                } else {
                    let tokens = c.len() as u32;
                    Ok(RowScore { score: Self::score_of(c), tokens, truncated: false, full_tokens: Some(tokens) })
                }
            })
            .collect();
        let model_rows = rows.iter().filter(|r| r.is_ok()).count();
        Ok(Scored { rows, stats: ScoreStats { model_rows, batches: 1, ..Default::default() } })
    }

    fn facts(&self) -> ModelFacts {
        ModelFacts { model: "fake".into(), ..Default::default() }
    }
}
