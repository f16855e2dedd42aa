//! `skyscore cluster scheduler|executor`: the processes of a Ballista cluster that knows
//! skyscore's functions. Queries come from `skyscore sql --cluster df://HOST:PORT`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::engine_args::EngineArgs;
use crate::cluster::executor::ExecutorOptions;
use crate::cluster::scheduler::SchedulerOptions;
use crate::run::check_report_paths;

#[derive(Debug, Args)]
#[command(after_help = "A cluster on three machines (paths of tables must be the same on all of them):
  host-a$ skyscore cluster scheduler --bind 0.0.0.0:50050
  host-b$ skyscore cluster executor --scheduler host-a:50050 --bind 0.0.0.0:50051 --external-host host-b \\
            --model Skywork/Skywork-Reward-V2-Llama-3.1-8B-40M --device cuda
  host-c$ skyscore cluster executor ... (the same, --external-host host-c)
  client$ skyscore sql --cluster df://host-a:50050 --model Skywork/Skywork-Reward-V2-Llama-3.1-8B-40M \\
            -t sft=/shared/sft.parquet \\
            \"COPY (SELECT *, skywork_score(instruction, input, output) AS score FROM sft) TO '/shared/scored.parquet'\"")]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

// Parsed once per process: the size of the executor's flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Plans queries and hands their tasks to executors (Ballista's scheduler with skyscore's
    /// functions and plan rule). Prints `skyscore scheduler listening on HOST:PORT`.
    Scheduler(SchedulerArgs),
    /// Runs query tasks; loads the model on its first scoring task and batches the rows of all
    /// its concurrent tasks through it. Takes the model flags of `score`/`sql`.
    Executor(ExecutorArgs),
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub bind: SocketAddr,
    /// Seconds without news from an executor before it counts as lost and its tasks are run
    /// again elsewhere.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub executor_timeout: u64,
}

#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// The scheduler: HOST:PORT or df://HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub scheduler: String,
    /// Address of this executor's Arrow Flight service (clients and other executors fetch
    /// results from it).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub bind: SocketAddr,
    /// Port of this executor's gRPC service (task control).
    #[arg(long, default_value_t = 50052)]
    pub grpc_port: u16,
    /// Host name others reach this executor at. [default: the --bind address]
    #[arg(long)]
    pub external_host: Option<String>,
    /// Tasks run at once. They share the one model: more tasks feed it bigger batches.
    #[arg(long, default_value_t = 2)]
    pub concurrent_tasks: usize,
    /// Seconds between heartbeats to the scheduler; keep it well under the scheduler's
    /// --executor-timeout.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub heartbeat_interval: u64,
    /// Folder for intermediate (shuffle) files. [default: a temporary folder]
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Bound of the score cache, in distinct rows (about 130 bytes each).
    #[arg(long, default_value_t = skyscore_udf::service::DEFAULT_CACHE_ENTRIES)]
    pub cache_entries: usize,
    /// Keep this executor's figures (rows, model rows, tokens, score distribution) in this
    /// JSON file, rewritten after every scoring call.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// Memory DataFusion's operators may use (sorts, joins, aggregations spill to --work-dir
    /// beyond it), in GB, shared by the concurrent tasks; 0 for no limit. [default: the
    /// machine's memory minus the model's weights (on CPU) minus max(2 GB, 10%)]
    #[arg(long, value_name = "GB")]
    pub memory_pool: Option<f64>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: ClusterArgs) -> Result<()> {
    // Ballista's binaries give their threads 32 MB stacks (deep plans recurse); so do we.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(32 * 1024 * 1024).build()?;
    match args.command {
        ClusterCommand::Scheduler(a) => runtime.block_on(crate::cluster::scheduler::run(SchedulerOptions {
            bind: a.bind,
            executor_timeout_s: a.executor_timeout.max(1),
        })),
        ClusterCommand::Executor(a) => {
            check_report_paths(a.stats_json.as_deref(), None)?;
            let engine = a.engine.resolve()?;
            let memory_pool = crate::cluster::executor::memory_pool(a.memory_pool, &engine)?;
            let scheduler = crate::cluster::parse_address(&a.scheduler).context("--scheduler")?;
            let external_host = a.external_host.or_else(|| {
                let ip = a.bind.ip();
                (!ip.is_unspecified()).then(|| ip.to_string())
            });
            runtime.block_on(crate::cluster::executor::run(ExecutorOptions {
                scheduler,
                bind: a.bind,
                external_host,
                grpc_port: a.grpc_port,
                concurrent_tasks: a.concurrent_tasks,
                heartbeat_interval_s: a.heartbeat_interval.max(1),
                work_dir: a.work_dir,
                engine,
                cache_entries: a.cache_entries,
                stats_json: a.stats_json,
                memory_pool,
            }))
        }
    }
}
