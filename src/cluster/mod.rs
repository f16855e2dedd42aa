//! Scoring on an Apache DataFusion Ballista cluster: our own scheduler and executor processes
//! (Ballista's as libraries, with the skyscore UDFs and plan rule registered), and the client
//! session of `skyscore sql --cluster`.
//!
//! Facts of Ballista 55 this module is built around:
//! - UDFs travel by name: the client, the scheduler and every executor register them.
//! - The adaptive planner (on by default) plans with its own rule list, without skyscore's
//!   ([`model_aware_rules`]); skyscore sessions turn it off, so the static planner plans with
//!   the scheduler's session state, rules included (tested: a filtered query scores only the
//!   rows that pass).
//! - Only session settings reach the scheduler and the executors: the model the client expects
//!   travels as `skyscore.expected_model`, and each executor checks it before scoring.

pub mod client;
pub mod executor;
pub mod scheduler;

use std::sync::Arc;

use ballista::prelude::SessionConfigExt;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::SessionConfig;
use skyscore_udf::{model_aware_rules, ScoringService, SkyscoreOptions};

use crate::sql::session::WRITE_ROW_GROUP_ROWS;

/// Settings of every skyscore session on a cluster (client, scheduler, executors).
pub fn session_config() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_option_extension(SkyscoreOptions::default())
        .with_information_schema(true)
        .set_usize("datafusion.execution.parquet.max_row_group_size", WRITE_ROW_GROUP_ROWS)
        // The adaptive planner would drop skyscore's plan rules and score rows a filter removes.
        .set_bool(ballista_core::config::BALLISTA_ADAPTIVE_PLANNER_ENABLED, false)
}

/// Ballista's session state for `config`, plus skyscore's plan rule and UDFs over `service`.
pub fn session_state(config: SessionConfig, service: &Arc<ScoringService>) -> datafusion::common::Result<SessionState> {
    // `config` comes from `session_config` (on the scheduler: its config producer, with the
    // client's settings applied), so it carries the `skyscore` extension.
    let state = ballista_core::utils::default_session_builder(config)?;
    let mut state =
        SessionStateBuilder::new_from_existing(state).with_physical_optimizer_rules(model_aware_rules()).build();
    for udf in skyscore_udf::udfs(service) {
        datafusion::execution::FunctionRegistry::register_udf(&mut state, Arc::new(udf))?;
    }
    Ok(state)
}

/// `df://host:port`, `host:port` → (host, port).
pub fn parse_address(address: &str) -> anyhow::Result<(String, u16)> {
    let rest = address.strip_prefix("df://").unwrap_or(address);
    let (host, port) =
        rest.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("`{address}`: expected HOST:PORT (or df://HOST:PORT)"))?;
    let port: u16 = port.parse().map_err(|_| anyhow::anyhow!("`{address}`: `{port}` is not a port number"))?;
    if host.is_empty() {
        anyhow::bail!("`{address}`: no host");
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use datafusion::physical_optimizer::PhysicalOptimizerRule;

    use super::*;

    #[test]
    fn addresses_parse_with_or_without_the_scheme() {
        assert_eq!(parse_address("df://10.0.0.1:50050").unwrap(), ("10.0.0.1".into(), 50050));
        assert_eq!(parse_address("localhost:1").unwrap(), ("localhost".into(), 1));
        assert!(parse_address("localhost").is_err());
        assert!(parse_address("h:port").is_err());
        assert!(parse_address(":5").is_err());
    }

    #[test]
    fn sessions_plan_statically_with_the_rule_and_the_udfs() {
        let config = session_config();
        assert!(!config.ballista_config().adaptive_query_planner_enabled());
        let service = ScoringService::lazy(Box::new(|| Err("no model here".into())), 16);
        let state = session_state(config, &service).unwrap();
        let names: Vec<&str> = state.physical_optimizers().iter().map(|r| r.name()).collect();
        assert_eq!(names.first(), Some(&skyscore_udf::KeepModelAboveFilters.name()));
        assert_eq!(names.last(), Some(&skyscore_udf::FilterBeforeModel.name()));
        assert!(state.scalar_functions().contains_key("skywork_score"));
        assert!(state.scalar_functions().contains_key("skywork_score_chat"));
        // Ballista's own functions are kept (nested ones included).
        assert!(state.scalar_functions().contains_key("make_array"));
    }
}
