//! Conversations as the reward model scores them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3Default;

/// One turn of a conversation. Chat templates see it as `{"role": ..., "content": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    /// A view of this turn that borrows its strings (no copy, whatever this one owns).
    pub fn borrowed(&self) -> ChatTurn<'_> {
        ChatTurn { role: Cow::Borrowed(&self.role), content: Cow::Borrowed(&self.content) }
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

/// A 128-bit content hash of a conversation: within one model (see [`crate::Scorer::fingerprint`])
/// a score depends on nothing else, so it keys score caches and stores.
pub type ConversationKey = u128;

/// xxh3-128 of the turns; lengths are hashed too, so turn boundaries cannot shift.
pub fn conversation_key(turns: &[ChatTurn<'_>]) -> ConversationKey {
    let mut h = Xxh3Default::new();
    h.update(&(turns.len() as u64).to_le_bytes());
    for t in turns {
        h.update(&(t.role.len() as u64).to_le_bytes());
        h.update(t.role.as_bytes());
        h.update(&(t.content.len() as u64).to_le_bytes());
        h.update(t.content.as_bytes());
    }
    h.digest128()
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

    #[test]
    fn keys_separate_turn_boundaries() {
        let a = [ChatTurn::new("user", "ab"), ChatTurn::new("assistant", "c")];
        let b = [ChatTurn::new("user", "a"), ChatTurn::new("assistant", "bc")];
        assert_ne!(conversation_key(&a), conversation_key(&b));
        let owned: Vec<ChatTurn<'static>> = a.iter().cloned().map(ChatTurn::into_owned).collect();
        assert_eq!(conversation_key(&a), conversation_key(&owned), "owned and borrowed turns hash alike");
    }

    #[test]
    fn turns_read_and_write_as_role_content_objects() {
        let turns: Vec<ChatTurn> = serde_json::from_str(r#"[{"role": "user", "content": "hi"}]"#).unwrap();
        assert_eq!(turns, vec![ChatTurn::new("user", "hi")]);
        assert_eq!(serde_json::to_string(&turns[0].borrowed()).unwrap(), r#"{"role":"user","content":"hi"}"#);
    }
}
