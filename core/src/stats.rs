//! What scoring took: the figures every report (the SQL service's totals, the end-of-run
//! summary, `--stats-json`) embeds instead of copying field by field.

use serde::Serialize;

/// Counters of model work. Adding two gives the figures of both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ScoreStats {
    /// Conversations the model ran.
    pub model_rows: usize,
    /// Tokens fed to the model, padding excluded.
    pub tokens: usize,
    /// Tokens the model computed, padding included.
    pub padded_tokens: usize,
    /// Rows longer than max_length that lost tokens.
    pub truncated_rows: usize,
    /// Device batches (forward passes).
    pub batches: usize,
    /// Rows answered from the persistent score store (scored by an earlier run).
    pub store_hits: usize,
    /// Rows identical to another row of the same chunk, scored once for all of them.
    pub duplicate_rows: usize,
    /// Seconds spent in the model's scoring calls.
    pub model_s: f64,
}

impl std::ops::AddAssign for ScoreStats {
    fn add_assign(&mut self, o: Self) {
        self.model_rows += o.model_rows;
        self.tokens += o.tokens;
        self.padded_tokens += o.padded_tokens;
        self.truncated_rows += o.truncated_rows;
        self.batches += o.batches;
        self.store_hits += o.store_hits;
        self.duplicate_rows += o.duplicate_rows;
        self.model_s += o.model_s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_sums_every_field() {
        let a = ScoreStats {
            model_rows: 1,
            tokens: 2,
            padded_tokens: 3,
            truncated_rows: 4,
            batches: 5,
            store_hits: 6,
            duplicate_rows: 7,
            model_s: 0.5,
        };
        let mut b = a;
        b += a;
        let doubled = ScoreStats {
            model_rows: 2,
            tokens: 4,
            padded_tokens: 6,
            truncated_rows: 8,
            batches: 10,
            store_hits: 12,
            duplicate_rows: 14,
            model_s: 1.0,
        };
        assert_eq!(b, doubled);
    }
}
