//! From an SFT row to token ids, by the model-card procedure: the conversation
//! `[user: prompt, assistant: output]` rendered with the checkpoint's chat template, one
//! leading `bos_token` string stripped, then tokenized with special tokens and truncated the
//! way transformers' `tokenizer(text, truncation=True, max_length=N)` truncates.

use std::path::Path;

use skyscore_core::{ChatTurn, ScoreRequest};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::template::{ChatTemplate, TemplateError};

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("the conversation has no turns")]
    Empty,
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Which end of an over-long row is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TruncationSide {
    /// Keep the first `max_length` tokens (transformers' default, and the reference tool's).
    #[default]
    Right,
    /// Keep the last `max_length` tokens (special prefix tokens such as BOS stay).
    Left,
}

impl std::str::FromStr for TruncationSide {
    type Err = String;
    fn from_str(side: &str) -> Result<Self, String> {
        match side {
            "right" => Ok(TruncationSide::Right),
            "left" => Ok(TruncationSide::Left),
            _ => Err(format!("unknown truncation side `{side}` (right, left)")),
        }
    }
}

impl TruncationSide {
    pub fn as_str(self) -> &'static str {
        match self {
            TruncationSide::Right => "right",
            TruncationSide::Left => "left",
        }
    }
}

/// A tokenized row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// True when the row was longer than `max_length` and lost tokens.
    pub truncated: bool,
    /// Tokens of the whole row before truncation.
    pub full_tokens: usize,
}

pub struct PromptEncoder {
    template: ChatTemplate,
    /// Without truncation: tells the full length of a row.
    tokenizer: Tokenizer,
    /// Configured with transformers-equivalent truncation, used for rows that are too long.
    truncating: Tokenizer,
    bos_token: Option<String>,
    max_length: usize,
}

impl PromptEncoder {
    pub fn new(
        template: ChatTemplate,
        tokenizer_path: &Path,
        bos_token: Option<String>,
        max_length: usize,
        side: TruncationSide,
    ) -> Result<Self, EncodeError> {
        let mut tokenizer = Tokenizer::from_file(tokenizer_path)
            .map_err(|e| EncodeError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| EncodeError::Tokenizer(e.to_string()))?;
        let mut truncating = tokenizer.clone();
        let direction = match side {
            TruncationSide::Right => TruncationDirection::Right,
            TruncationSide::Left => TruncationDirection::Left,
        };
        truncating
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction,
            }))
            .map_err(|e| EncodeError::Tokenizer(e.to_string()))?;
        Ok(Self { template, tokenizer, truncating, bos_token, max_length })
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Largest token id the tokenizer can produce (vocabulary and added tokens).
    pub fn max_token_id(&self) -> u32 {
        self.tokenizer.get_vocab(true).values().copied().max().unwrap_or(0)
    }

    /// Id of a token string, if the tokenizer knows it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The text that gets tokenized for `row`.
    pub fn render(&self, row: &ScoreRequest<'_>) -> Result<String, EncodeError> {
        self.render_conversation(&row.conversation())
    }

    /// Renders a conversation and strips one leading BOS string (the tokenizer adds its own).
    pub fn render_conversation(&self, turns: &[ChatTurn<'_>]) -> Result<String, EncodeError> {
        if turns.is_empty() {
            // Templates render nothing (or fail) for no messages; a BOS token alone is no score.
            return Err(EncodeError::Empty);
        }
        let mut text = self.template.render(turns, false)?;
        if let Some(bos) = self.bos_token.as_deref().filter(|b| !b.is_empty()) {
            if text.starts_with(bos) {
                text.drain(..bos.len());
            }
        }
        Ok(text)
    }

    pub fn encode(&self, row: &ScoreRequest<'_>) -> Result<Encoded, EncodeError> {
        self.encode_conversation(&row.conversation())
    }

    pub fn encode_conversation(&self, turns: &[ChatTurn<'_>]) -> Result<Encoded, EncodeError> {
        let text = self.render_conversation(turns)?;
        self.encode_text(&text)
    }

    pub fn encode_text(&self, text: &str) -> Result<Encoded, EncodeError> {
        let tokenize = |t: &Tokenizer| t.encode(text, true).map_err(|e| EncodeError::Tokenizer(e.to_string()));
        let full = tokenize(&self.tokenizer)?;
        if full.len() <= self.max_length {
            return Ok(Encoded { ids: full.get_ids().to_vec(), truncated: false, full_tokens: full.len() });
        }
        // Over-long rows are tokenized again by the truncating tokenizer rather than cut here,
        // so special tokens added by the post-processor end up where transformers puts them.
        Ok(Encoded { ids: tokenize(&self.truncating)?.get_ids().to_vec(), truncated: true, full_tokens: full.len() })
    }
}
