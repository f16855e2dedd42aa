//! The contract between SQL and the model engine.

use std::borrow::Cow;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChatTurn<'a> {
    pub role: Cow<'a, str>,
    pub content: Cow<'a, str>,
}

impl<'a> ChatTurn<'a> {
    pub fn new(role: impl Into<Cow<'a, str>>, content: impl Into<Cow<'a, str>>) -> Self {
        Self { role: role.into(), content: content.into() }
    }

    pub fn into_owned(self) -> ChatTurn<'static> {
        ChatTurn { role: Cow::Owned(self.role.into_owned()), content: Cow::Owned(self.content.into_owned()) }
    }
}

/// A conversation to score; its last turn is normally the assistant's response.
pub type Conversation<'a> = Vec<ChatTurn<'a>>;

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
    pub fn user_prompt(&self) -> Cow<'a, str> {
        match self.input {
            Some(input) if !input.is_empty() => format!("{}\n{}", self.instruction, input).into(),
            _ => self.instruction.into(),
        }
    }

    /// `[user: prompt, assistant: output]`, the conversation the reward model scores.
    pub fn conversation(&self) -> Conversation<'a> {
        vec![ChatTurn::new("user", self.user_prompt()), ChatTurn::new("assistant", self.output)]
    }
}

/// Counters of one scoring call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScoreStats {
    /// Conversations the model ran.
    pub rows: usize,
    /// Tokens fed to the model, padding excluded.
    pub tokens: usize,
    /// Tokens the model computed, padding included.
    pub padded_tokens: usize,
    pub truncated_rows: usize,
    pub batches: usize,
}

impl std::ops::AddAssign for ScoreStats {
    fn add_assign(&mut self, o: Self) {
        self.rows += o.rows;
        self.tokens += o.tokens;
        self.padded_tokens += o.padded_tokens;
        self.truncated_rows += o.truncated_rows;
        self.batches += o.batches;
    }
}

/// Scores in input order plus what it took to compute them.
#[derive(Debug, Clone, Default)]
pub struct Scored {
    pub scores: Vec<f32>,
    pub stats: ScoreStats,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ScorerError {
    /// One conversation cannot be scored (its prompt fails to render, for example).
    #[error("row {row}: {reason}")]
    Row { row: usize, reason: String },
    /// The model or device failed; nothing was scored.
    #[error("scoring failed: {0}")]
    Engine(String),
}

/// Something that turns conversations into reward scores. Implementations own their device
/// batching; scores come back in the order of `conversations`, each independent of the others.
pub trait Scorer: Send + Sync {
    fn score(&self, conversations: &[Conversation<'_>]) -> Result<Scored, ScorerError>;

    /// Names everything a score depends on (model, revision, template, max_length, truncation
    /// side): two scorers with the same fingerprint give the same scores.
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
    fn user_prompt_joins_non_empty_input() {
        assert_eq!(ScoreRequest::new("Do", Some("this"), "ok").user_prompt(), "Do\nthis");
        assert_eq!(ScoreRequest::new("Do", Some(""), "ok").user_prompt(), "Do");
        assert_eq!(ScoreRequest::new("Do", None, "ok").user_prompt(), "Do");
        assert_eq!(ScoreRequest::new("Do", Some(" "), "ok").user_prompt(), "Do\n ");
    }

    #[test]
    fn conversation_is_user_then_assistant() {
        let conv = ScoreRequest::new("Q", Some("ctx"), "A").conversation();
        assert_eq!(conv, vec![ChatTurn::new("user", "Q\nctx"), ChatTurn::new("assistant", "A")]);
    }
}
