//! The DataFusion side of skyscore: the `skywork_score` and `skywork_score_chat` scalar UDFs,
//! their argument handling, the batching service that sends rows to a [`Scorer`], the score
//! cache in front of it, and the plan rule that keeps the model above filters. This crate
//! knows the [`Scorer`] trait (from `skyscore-core`), not the model behind it.
//!
//! It must not depend on candle, tokenizers, redb or Ballista (the engine and the app bring
//! those), so the Python package can register these UDFs with no cluster code; it holds no
//! `unsafe` code.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn demo(scorer: Arc<dyn skyscore_udf::Scorer>) {
//! let ctx = datafusion::prelude::SessionContext::new();
//! let service = skyscore_udf::register(&ctx, skyscore_udf::ScoringService::new(scorer));
//! // ctx.sql("SELECT skywork_score(instruction, input, output) FROM sft") ...
//! # let _ = service;
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod args;
pub mod cache;
pub mod columns;
pub mod options;
pub mod plan;
pub mod service;
pub mod skywork_score;
pub mod skywork_score_chat;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::SessionContext;

pub use options::{expectation_json, SkyscoreOptions};
pub use plan::{model_aware_rules, plan_calls_model, FilterBeforeModel, KeepModelAboveFilters, MODEL_FUNCTIONS};
pub use service::{ScorerLoader, ScoringService, ServiceStats};
pub use skyscore_core::{
    ChatTurn, Conversation, RowResult, RowScore, ScoreRequest, ScoreStats, Scored, Scorer, ScorerError,
};
pub use skywork_score::SkyworkScore;
pub use skywork_score_chat::SkyworkScoreChat;

/// The UDFs over one service (one model for the whole process).
pub fn udfs(service: &Arc<ScoringService>) -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(SkyworkScore::new(service.clone())),
        ScalarUDF::new_from_impl(SkyworkScoreChat::new(service.clone())),
    ]
}

/// Registers `skywork_score` and `skywork_score_chat` on `ctx`; returns the service for stats.
pub fn register(ctx: &SessionContext, service: Arc<ScoringService>) -> Arc<ScoringService> {
    for udf in udfs(&service) {
        ctx.register_udf(udf);
    }
    service
}
