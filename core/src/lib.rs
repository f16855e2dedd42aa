//! The contract between skyscore's front ends (`skyscore score`, the SQL UDFs, a cluster
//! executor) and the engine that runs the model. It knows conversations, scores and counts;
//! neither DataFusion nor candle.
//!
//! - [`conversation`]: chat turns, the Alpaca row's conversation, and its content hash.
//! - [`scorer`]: the [`Scorer`] trait and its per-row results.
//! - [`stats`]: [`ScoreStats`], the one set of run figures every report embeds.

pub mod conversation;
pub mod scorer;
pub mod stats;

pub use conversation::{conversation_key, ChatTurn, Conversation, ConversationKey, ScoreRequest};
pub use scorer::{RowResult, RowScore, Scored, Scorer, ScorerError};
pub use stats::ScoreStats;
