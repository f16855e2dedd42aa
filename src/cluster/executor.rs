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
    /// DataFusion's memory pool in bytes, shared by the tasks (`Some(0)`: no limit; `None`:
    /// Ballista's default, 70% of the machine).
    pub memory_pool: Option<u64>,
}

/// Headroom left outside the pool and the weights: the activations of the forward pass, the
/// tokenizer, the score cache and the process itself.
fn headroom(host: u64) -> u64 {
    (2u64 << 30).max(host / 10)
}

/// The executor's memory pool: `--memory-pool` when given (GB; 0: no limit), else the
/// memory this process may use (its container's limit when lower) minus the model's weights
/// minus [`headroom`]. An executor holding an 8B model in f32 on CPU (32 GB) must not let
/// DataFusion plan for memory the model already uses.
pub fn memory_pool(gb: Option<f64>, engine: &ResolvedEngine) -> Result<Option<u64>> {
    if let Some(gb) = gb {
        anyhow::ensure!(gb.is_finite() && gb >= 0.0, "--memory-pool must be a number of GB (0: no limit), got {gb}");
        return Ok(Some((gb * 1e9) as u64));
    }
    let Some(host) = skyscore_engine::engine::usable_memory() else { return Ok(None) };
    let weights = match skyscore_engine::engine::resident_weight_bytes(&engine.model, &engine.options) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!("cannot size the memory pool from the model ({e:#}); Ballista's default (70% of memory)");
            return Ok(None);
        }
    };
    let pool = host.saturating_sub(weights).saturating_sub(headroom(host));
    anyhow::ensure!(
        pool >= 256 << 20,
        "this machine's {:.1} GB leave no memory for queries beside the model's weights ({:.1} GB) and {:.1} GB \
         of headroom; use a GPU, --dtype bf16, a smaller model, or set --memory-pool",
        host as f64 / 1e9,
        weights as f64 / 1e9,
        headroom(host) as f64 / 1e9
    );
    tracing::info!(
        "memory pool {:.1} GB: {:.1} GB of memory, {:.1} GB for the model's weights, {:.1} GB headroom",
        pool as f64 / 1e9,
        host as f64 / 1e9,
        weights as f64 / 1e9,
        headroom(host) as f64 / 1e9
    );
    Ok(Some(pool))
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
        memory_pool_size: options.memory_pool,
        ..Default::default()
    };
    println!(
        "skyscore executor on {} (flight), grpc port {}, scheduler {}:{}",
        options.bind, options.grpc_port, options.scheduler.0, options.scheduler.1
    );
    start_executor_process(Arc::new(config)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_llama() -> ResolvedEngine {
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/tiny-llama");
        ResolvedEngine { model: model.display().to_string(), options: Default::default(), dtype_reason: None }
    }

    #[test]
    fn the_pool_leaves_room_for_the_weights_or_takes_the_flag() {
        let engine = tiny_llama();
        assert_eq!(memory_pool(Some(1.5), &engine).unwrap(), Some(1_500_000_000));
        assert_eq!(memory_pool(Some(0.0), &engine).unwrap(), Some(0), "0: no limit");
        assert!(memory_pool(Some(-1.0), &engine).is_err());
        let Some(host) = skyscore_engine::engine::usable_memory() else {
            eprintln!("SKIPPED automatic pool size: this system does not report its memory");
            return;
        };
        let weights = skyscore_engine::engine::resident_weight_bytes(&engine.model, &engine.options).unwrap();
        assert!(weights > 0 && weights < 100 << 20, "tiny-llama's weights: {weights} bytes");
        assert_eq!(memory_pool(None, &engine).unwrap(), Some(host - weights - headroom(host)));
    }
}
