//! The contract between skyscore's front ends (`skyscore score`, the SQL UDFs, a cluster
//! executor) and the engine that runs the model. It knows conversations, scores and counts;
//! neither DataFusion nor candle.
//!
//! - [`conversation`]: chat turns, the Alpaca row's conversation, and its content hash.
//! - [`scorer`]: the [`Scorer`] trait and its per-row results.
//! - [`stats`]: [`ScoreStats`], the one set of run figures every report embeds.
//! - [`distribution`]: the distribution of a run's scores (quantiles, histogram), streaming.
//! - [`distinct`]: [`Distinct`], deduplication of conversations by content hash.
//! - [`lengths`]: [`TokenLengths`], the rows' token lengths and what truncation cost them.
//! - [`facts`]: [`ModelFacts`], what a score depends on besides the conversation.
//!
//! It must not depend on DataFusion, Arrow, Ballista, candle or tokenizers; it holds no
//! `unsafe` code.

#![forbid(unsafe_code)]

pub mod conversation;
pub mod distinct;
pub mod distribution;
pub mod facts;
pub mod lengths;
pub mod scorer;
pub mod stats;

pub use conversation::{conversation_key, ChatTurn, Conversation, ConversationKey, ScoreRequest};
pub use distinct::Distinct;
pub use distribution::{DistributionSummary, ScoreDistribution};
pub use facts::ModelFacts;
pub use lengths::{LengthSummary, TokenLengths};
pub use scorer::{RowResult, RowScore, Scored, Scorer, ScorerError, StoreOutcome};
pub use stats::ScoreStats;
