//! `skyscore cluster scheduler`: Ballista's scheduler, planning with skyscore's UDFs and rule.
//! It never scores: the UDFs it knows are there to plan with (a constant expression the
//! optimizer tries to fold stays for the executors).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use skyscore_udf::ScoringService;

use super::{session_config, session_state};

pub struct SchedulerOptions {
    pub bind: SocketAddr,
    /// Seconds without a heartbeat after which an executor counts as lost and its tasks run
    /// elsewhere.
    pub executor_timeout_s: u64,
}

/// Binds, prints `listening on HOST:PORT` on stdout (the port is the OS's pick with `:0`), and
/// serves until the process ends.
pub async fn run(options: SchedulerOptions) -> Result<()> {
    let service = ScoringService::lazy(Box::new(|| Err("the scheduler plans queries; executors score rows".into())), 1);
    let planning_service = service.clone();
    let mut config = SchedulerConfig {
        bind_host: options.bind.ip().to_string(),
        bind_port: options.bind.port(),
        executor_timeout_seconds: options.executor_timeout_s,
        expire_dead_executor_interval_seconds: options.executor_timeout_s.clamp(1, 15),
        no_executors_grace_period_seconds: options.executor_timeout_s,
        ..Default::default()
    }
    .with_override_config_producer(Arc::new(session_config))
    .with_override_session_builder(Arc::new(move |config| session_state(config, &planning_service)));
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .with_context(|| format!("cannot listen on {}", options.bind))?;
    let address = listener.local_addr()?;
    config.bind_port = address.port();
    config.validate()?;
    let config = Arc::new(config);
    let cluster = BallistaCluster::new_from_config(&config).await?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config).await?;
    println!("skyscore scheduler listening on {address}");
    tracing::info!(%address, "scheduler started");
    start_grpc_service_with_listener(listener, scheduler).await?;
    Ok(())
}
