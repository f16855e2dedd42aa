//! The client side of `skyscore sql --cluster df://HOST:PORT`: a Ballista session whose
//! queries the scheduler plans and the executors run. The client never loads the model; it
//! tells the executors which model it expects, and each checks before it scores.

use std::sync::Arc;

use anyhow::{Context, Result};
use ballista::prelude::SessionContextExt;
use datafusion::prelude::SessionContext;
use skyscore_core::ModelFacts;
use skyscore_udf::{expectation_json, ScoringService};

use super::{session_config, session_state};
use crate::run::ResolvedEngine;
use skyscore_engine::engine::describe_model;

/// The service behind the client's UDFs: planning only (the executors score).
pub fn planning_service() -> Arc<ScoringService> {
    ScoringService::lazy(
        Box::new(|| Err("with --cluster, the executors score rows; the client does not load a model".into())),
        1,
    )
}

/// What the executors must state about their model for this client's queries: the facts of
/// the client's `--model`/`--config` as read from its small files, or, when the client cannot
/// read them (a model directory only the executors have), the model name, max_length,
/// truncation side and dtype.
pub fn expected_model(engine: &ResolvedEngine) -> Vec<(String, String)> {
    match describe_model(&engine.model, &engine.options) {
        Ok(facts) => facts.portable_pairs(),
        Err(e) => {
            tracing::warn!(
                "cannot read `{}` here ({e:#}): the executors are checked for its name, max_length, truncation side and dtype only",
                engine.model
            );
            let o = &engine.options;
            ModelFacts::name_only_pairs(&engine.model, o.max_length, o.truncation_side.as_str(), &o.dtype.to_string())
        }
    }
}

/// A session on the cluster at `url` (`df://host:port`), with the UDFs registered and the
/// expected model set.
pub async fn connect(
    url: &str,
    service: &Arc<ScoringService>,
    partitions: Option<usize>,
    expected: &[(String, String)],
) -> Result<SessionContext> {
    let (host, port) = super::parse_address(url)?;
    // Ballista connects when the first query runs; an unreachable scheduler is better said now.
    let reachable =
        tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect((host.as_str(), port)))
            .await;
    if !matches!(reachable, Ok(Ok(_))) {
        anyhow::bail!(
            "no scheduler answers at {host}:{port} (start one with `skyscore cluster scheduler --bind {host}:{port}`)"
        );
    }
    let mut config = session_config().set_str(skyscore_udf::options::EXPECTED_MODEL_KEY, &expectation_json(expected));
    if let Some(n) = partitions {
        config = config.with_target_partitions(n.max(1));
    }
    let state = session_state(config, service)?;
    let ctx = SessionContext::remote_with_state(&format!("df://{host}:{port}"), state)
        .await
        .with_context(|| format!("connecting to the scheduler at {host}:{port}"))?;
    // `remote_with_state` replaces the scalar functions with Ballista's: ours go back in.
    skyscore_udf::register(&ctx, service.clone());
    Ok(ctx.enable_url_table())
}
