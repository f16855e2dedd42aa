//! The contract between SQL and the model engine.

/// One SFT row to score: the Alpaca triple. `input: None` and `Some("")` both mean "no input".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreRequest<'a> {
    pub instruction: &'a str,
    pub input: Option<&'a str>,
    pub output: &'a str,
}

impl<'a> ScoreRequest<'a> {
    pub fn new(instruction: &'a str, input: Option<&'a str>, output: &'a str) -> Self {
        Self { instruction, input, output }
    }

    /// The user turn of the model-card prompt: the instruction, plus a newline and the input
    /// when the input is non-empty.
    pub fn user_prompt(&self) -> std::borrow::Cow<'a, str> {
        match self.input {
            Some(input) if !input.is_empty() => format!("{}\n{}", self.instruction, input).into(),
            _ => self.instruction.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScorerError {
    /// The row itself cannot be scored (its prompt fails to render, for example).
    #[error("row {row}: {reason}")]
    Row { row: usize, reason: String },
    /// The model or device failed; nothing in the batch was scored.
    #[error("scoring failed: {0}")]
    Engine(String),
}

/// Something that turns SFT rows into reward scores. Implementations own their batching;
/// scores come back in the order of `rows`.
pub trait Scorer: Send + Sync {
    fn score(&self, rows: &[ScoreRequest<'_>]) -> Result<Vec<f32>, ScorerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_prompt_joins_non_empty_input() {
        assert_eq!(ScoreRequest::new("Do", Some("this"), "ok").user_prompt(), "Do\nthis");
        assert_eq!(ScoreRequest::new("Do", Some(""), "ok").user_prompt(), "Do");
        assert_eq!(ScoreRequest::new("Do", None, "ok").user_prompt(), "Do");
        assert_eq!(ScoreRequest::new("Do", Some(" "), "ok").user_prompt(), "Do\n ");
    }
}
