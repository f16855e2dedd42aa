//! [`TokenLengths`]: how long a run's rows were in tokens, and what truncation cost them. A
//! `--max-length` that cuts many rows silently changes what is scored, so every report shows
//! the length distribution, how many rows lost tokens and how many at most, and a max_length
//! that would keep 99% of the rows whole.

use serde::Serialize;

use crate::distribution::ScoreDistribution;
use crate::scorer::RowScore;

/// Lengths are suggested in steps of this many tokens.
const SUGGESTION_STEP: usize = 256;

/// Streaming figures of the rows' token lengths (bounded memory, like the score distribution).
#[derive(Debug, Clone, Default)]
pub struct TokenLengths {
    /// Every row's length before truncation (for a truncated row the store answered, what the
    /// model read: a lower bound).
    lengths: ScoreDistribution,
    /// Tokens of the whole row, where known (see [`RowScore::full_tokens`]).
    full: ScoreDistribution,
    rows: usize,
    truncated: usize,
    /// Truncated rows whose full length is unknown (answered by the score store).
    truncated_unknown: usize,
    max_cut: u32,
}

/// The figures a report shows: quantiles of the rows' lengths before truncation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LengthSummary {
    /// Rows measured (scored rows).
    pub rows: usize,
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
    pub max: u32,
    pub truncated_rows: usize,
    /// The most tokens one row lost; `None` when no truncated row's full length is known (rows
    /// answered by the store, or read back from a file, keep only what the model read).
    pub max_tokens_cut: Option<u32>,
    /// Truncated rows of unknown full length: the quantiles count them at their cut length.
    pub unknown_full_lengths: usize,
    /// A `max_length` (a multiple of 256, within the model's limit) that keeps 99% of the rows
    /// whole; given when more than 1% of the rows were truncated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggested_max_length: Option<usize>,
}

impl TokenLengths {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, row: &RowScore) {
        self.rows += 1;
        self.lengths.add(row.full_tokens.unwrap_or(row.tokens) as f64);
        match row.full_tokens {
            Some(full) => {
                self.full.add(full as f64);
                self.max_cut = self.max_cut.max(full.saturating_sub(row.tokens));
            }
            None => self.truncated_unknown += 1,
        }
        self.truncated += row.truncated as usize;
    }

    /// The distribution of the rows' lengths before truncation (for a histogram).
    pub fn distribution(&self, bins: usize) -> Option<crate::DistributionSummary> {
        self.lengths.summary(bins)
    }

    /// The summary, `None` before any row. `model_limit` is the model's
    /// `max_position_embeddings`, when known: no suggestion goes past it.
    pub fn summary(&self, model_limit: Option<usize>) -> Option<LengthSummary> {
        let quantile = |q: f64| self.lengths.quantile(q).map(|v| v.round() as u32);
        let suggested = (self.truncated * 100 > self.rows).then(|| self.suggestion(model_limit)).flatten();
        Some(LengthSummary {
            rows: self.rows,
            p50: quantile(0.5)?,
            p90: quantile(0.9)?,
            p99: quantile(0.99)?,
            max: quantile(1.0)?,
            truncated_rows: self.truncated,
            max_tokens_cut: (self.truncated > self.truncated_unknown).then_some(self.max_cut),
            unknown_full_lengths: self.truncated_unknown,
            suggested_max_length: suggested,
        })
    }

    /// The 99th percentile of the full lengths, rounded up to a step, capped at the model's
    /// limit. Truncated rows of unknown length count as longer than any known one.
    fn suggestion(&self, model_limit: Option<usize>) -> Option<usize> {
        let known = self.full.count();
        let total = known + self.truncated_unknown;
        // The 99% point among all rows, taken among the known ones (the unknown ones sort last).
        let keep = (total as f64 * 0.99).ceil() as usize;
        if known == 0 || keep > known {
            return model_limit;
        }
        let p = self.full.quantile(keep as f64 / known as f64)?;
        let step = (p.ceil() as usize).div_ceil(SUGGESTION_STEP) * SUGGESTION_STEP;
        Some(model_limit.map_or(step, |limit| step.min(limit)))
    }
}

impl LengthSummary {
    /// One line for the end-of-run summary.
    pub fn line(&self, max_length: usize) -> String {
        let mut line = format!(
            "tokens per row before truncation: p50 {} · p90 {} · p99 {} · max {}",
            self.p50, self.p90, self.p99, self.max
        );
        if self.truncated_rows > 0 {
            line.push_str(&format!(
                " · {} of {} rows ({:.1}%) cut to max_length {max_length}",
                self.truncated_rows,
                self.rows,
                100.0 * self.truncated_rows as f64 / self.rows.max(1) as f64,
            ));
            if let Some(cut) = self.max_tokens_cut {
                line.push_str(&format!(", by up to {cut} tokens"));
            }
            if self.unknown_full_lengths > 0 {
                line.push_str(&format!(
                    " ({} of them of unknown full length, counted at their cut length)",
                    self.unknown_full_lengths
                ));
            }
        }
        if let Some(suggested) = self.suggested_max_length {
            line.push_str(&format!(
                "\nwarning: more than 1% of the rows were truncated; --max-length {suggested} would keep 99% of them whole"
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tokens: u32, full: Option<u32>) -> RowScore {
        RowScore { score: 0.0, tokens, truncated: full != Some(tokens), full_tokens: full }
    }

    #[test]
    fn quantiles_truncation_and_a_suggestion() {
        let mut lengths = TokenLengths::new();
        for t in 1..=95 {
            lengths.add(&row(t * 10, Some(t * 10)));
        }
        // Five rows cut at 1000 tokens, from up to 3000.
        for full in [1200, 1500, 2000, 2500, 3000] {
            lengths.add(&row(1000, Some(full)));
        }
        let s = lengths.summary(Some(8192)).unwrap();
        assert_eq!(s.max, 3000);
        assert!((490..=510).contains(&s.p50), "{s:?}");
        assert_eq!((s.truncated_rows, s.max_tokens_cut, s.unknown_full_lengths), (5, Some(2000), 0));
        // 99% of 100 rows whole: at least the 99th row's 2500 tokens (the digest interpolates
        // towards the 100th), in steps of 256.
        let suggested = s.suggested_max_length.unwrap();
        assert!((2560..=3072).contains(&suggested) && suggested.is_multiple_of(256), "{suggested}");
        assert_eq!(lengths.summary(Some(2048)).unwrap().suggested_max_length, Some(2048), "capped at the model");
        let line = s.line(1000);
        assert!(line.contains("5 of 100 rows (5.0%) cut to max_length 1000, by up to 2000 tokens"), "{line}");
        assert!(line.contains(&format!("--max-length {suggested} would keep 99%")), "{line}");
    }

    #[test]
    fn few_truncated_rows_need_no_suggestion_and_unknown_lengths_count_as_long() {
        let mut lengths = TokenLengths::new();
        for t in 0..200 {
            lengths.add(&row(100 + t, Some(100 + t)));
        }
        lengths.add(&row(512, None));
        let s = lengths.summary(None).unwrap();
        assert_eq!((s.truncated_rows, s.suggested_max_length), (1, None));
        assert!(!s.line(512).contains("warning"));
        for _ in 0..10 {
            lengths.add(&row(512, None));
        }
        // 11 of 211 rows truncated, lengths unknown: no known length keeps 99%.
        let s = lengths.summary(Some(4096)).unwrap();
        assert_eq!((s.suggested_max_length, s.max_tokens_cut, s.unknown_full_lengths), (Some(4096), None, 11));
        assert!(s.line(512).contains("11 of them of unknown full length"), "{}", s.line(512));
        assert_eq!(TokenLengths::new().summary(None), None);
    }
}
