//! `skyscore cluster executor`: Ballista's executor with the skyscore UDFs over one scoring
//! service. The model loads once, on the first scoring task; the service batches the rows of
//! all the tasks the executor runs at once, as in `skyscore sql`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};

use super::{session_config, session_state};
use crate::run::ResolvedEngine;
use crate::run::RunSummary;

pub struct ExecutorOptions {
    pub scheduler: (String, u16),
    pub bind: SocketAddr,
    /// The address the scheduler and clients reach this executor at.
    pub external_host: Option<String>,
    pub grpc_port: u16,
    pub concurrent_tasks: usize,
    pub heartbeat_interval_s: u64,
    pub work_dir: Option<PathBuf>,
    pub engine: ResolvedEngine,
    pub cache_entries: usize,
    /// Rewritten after every scoring call with this executor's figures (`sql --stats-json`'s
    /// shape).
    pub stats_json: Option<PathBuf>,
}

/// Serves until the process is stopped (Ctrl-C, SIGTERM) or the scheduler stops it.
pub async fn run(options: ExecutorOptions) -> Result<()> {
    let started = Instant::now();
    let service = options.engine.lazy_service(options.cache_entries);
    let engine = options.engine.clone();
    let stats_json = options.stats_json.clone();
    service.set_observer(Box::new(move |service| {
        let summary = RunSummary::of_service(service, &engine, started.elapsed().as_secs_f64());
        tracing::info!(
            rows = summary.rows,
            model_rows = summary.stats.model_rows,
            cache_hits = summary.cache_hits,
            tokens = summary.stats.tokens,
            "scored"
        );
        if let Some(path) = &stats_json {
            if let Err(e) = summary.write_json_atomically(path) {
                tracing::warn!("cannot write {}: {e:#}", path.display());
            }
        }
    }));
    if let Some(path) = &options.stats_json {
        RunSummary::of_service(&service, &options.engine, 0.0).write_json_atomically(path)?;
    }

    // Functions by name, as physical plans name them: DataFusion's (nested ones included) and ours.
    let state = session_state(session_config(), &service)?;
    let registry = BallistaFunctionRegistry::from(&state);
    let config = ExecutorProcessConfig {
        bind_host: options.bind.ip().to_string(),
        port: options.bind.port(),
        external_host: options.external_host.clone(),
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler.0.clone(),
        scheduler_port: options.scheduler.1,
        scheduler_connect_timeout_seconds: 60,
        vcores: options.concurrent_tasks.max(1),
        executor_heartbeat_interval_seconds: options.heartbeat_interval_s,
        work_dir: options.work_dir.as_ref().map(|p| p.display().to_string()),
        override_function_registry: Some(Arc::new(registry)),
        override_config_producer: Some(Arc::new(session_config)),
        ..Default::default()
    };
    println!(
        "skyscore executor on {} (flight), grpc port {}, scheduler {}:{}",
        options.bind, options.grpc_port, options.scheduler.0, options.scheduler.1
    );
    start_executor_process(Arc::new(config)).await?;
    Ok(())
}
