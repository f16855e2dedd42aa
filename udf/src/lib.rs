//! The DataFusion side of skyscore: the `skywork_score` scalar UDF, its argument handling and
//! the batching of record batches toward a scorer. This crate knows the [`Scorer`] trait, not
//! the model behind it.

pub mod scorer;

pub use scorer::{ScoreRequest, Scorer, ScorerError};
