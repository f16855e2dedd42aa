//! `skyscore sql`: SQL over Parquet/CSV/JSON tables with `skywork_score` available, as one
//! query, a file of statements, or an interactive shell (datafusion-cli's).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use datafusion::prelude::SessionContext;
use datafusion_cli::exec::exec_from_repl;
use datafusion_cli::object_storage::instrumented::InstrumentedObjectStoreRegistry;
use datafusion_cli::print_format::PrintFormat;
use datafusion_cli::print_options::{MaxRows, PrintOptions};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use skyscore_udf::ScoringService;

use super::distribution::{render, TERMINAL_BINS};
use super::engine_args::EngineArgs;
use crate::plot::{write_histogram, Measure};
use crate::run::{check_report_paths, RunSummary};
use crate::sql::output::{prepare_copies, run_statements, tidy_cluster_error, tidy_signature_error, write_query};
use crate::sql::session::{new_session, register_table, set_parquet_metadata};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  skyscore sql --model sample_data/models/tiny-llama -t sft=sample_data/sft_sample.parquet \\
    \"SELECT id, skywork_score(instruction, input, output) AS s FROM sft ORDER BY s DESC LIMIT 10\"
  skyscore sql --model M -t sft=sft.parquet \\
    \"COPY (SELECT *, skywork_score(instruction, input, output) AS score FROM sft) TO 'scored.parquet'\"
  skyscore sql --model M -t sft=sft.parquet     # interactive shell

Functions: skywork_score(instruction, [input,] output) and skywork_score_chat(messages).
The model loads only when a statement calls them; each distinct row is scored once per session.")]
pub struct SqlArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Register a table: NAME=PATH, a .parquet/.csv/.json/.jsonl file or a directory of them.
    #[arg(short = 't', long = "table", value_name = "NAME=PATH")]
    pub tables: Vec<String>,
    /// SQL to run (one or more statements separated by `;`). Without it (and without -f),
    /// an interactive shell starts.
    pub query: Option<String>,
    /// Run the statements in this file.
    #[arg(short = 'f', long = "file", conflicts_with = "query")]
    pub file: Option<PathBuf>,
    /// Write the result of the (single) query to this file (.parquet, .csv, .json/.jsonl)
    /// instead of printing it; results stream, nothing is held in memory.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// How printed results look: table, csv, tsv, json, ndjson, automatic.
    #[arg(long, value_enum, default_value = "table")]
    pub format: PrintFormat,
    /// Most rows printed per result (`0` or `inf` for all).
    #[arg(long, default_value = "40")]
    pub maxrows: MaxRows,
    /// DataFusion partitions (parallel streams of record batches). [default: CPU cores]
    #[arg(long)]
    pub partitions: Option<usize>,
    /// Bound of the score cache, in distinct rows (about 130 bytes each).
    #[arg(long, default_value_t = skyscore_udf::service::DEFAULT_CACHE_ENTRIES)]
    pub cache_entries: usize,
    /// Write the end-of-run figures as JSON (the score distribution of each scoring function
    /// included).
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
    /// Draw the histogram of the scores, quantiles marked, to FILE.svg or FILE.png (with
    /// several scoring functions, one file each: FILE-skywork_score_chat.svg, ...).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// No progress display.
    #[arg(long)]
    pub no_progress: bool,
    /// Run on a Ballista cluster (`skyscore cluster scheduler` + executors) instead of here:
    /// df://HOST:PORT of its scheduler. The client loads no model; its --model/--config and
    /// engine flags name the model the executors must serve (checked before they score).
    /// Table paths must be readable at the same path on the scheduler and every executor.
    #[arg(long, value_name = "df://HOST:PORT", conflicts_with_all = ["stats_json", "plot"])]
    pub cluster: Option<String>,
}

pub fn run(args: SqlArgs) -> Result<()> {
    let started = Instant::now();
    let resolved = args.engine.resolve()?;
    check_report_paths(args.stats_json.as_deref(), args.plot.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(url) = &args.cluster {
        let service = crate::cluster::client::planning_service();
        let expected = crate::cluster::client::expected_model(&resolved);
        return runtime.block_on(async {
            let ctx = crate::cluster::client::connect(url, &service, args.partitions, &expected).await?;
            run_session(&args, ctx, &service, Some(&expected)).await
        });
    }
    let service = resolved.lazy_service(args.cache_entries);
    let ctx = new_session(&service, args.partitions);
    let result = runtime.block_on(run_session(&args, ctx, &service, None));

    let summary = RunSummary::of_service(&service, &resolved, started.elapsed().as_secs_f64());
    if service.is_loaded() {
        crate::interrupt::record_kept(crate::interrupt::Kept {
            store: resolved.options.store.clone(),
            committed: summary.store.committed_rows,
            unsaved: summary.store.unsaved_rows,
            store_failure: summary.store.store_failure.clone(),
        });
    }
    let distributions = service.distributions();
    if service.is_loaded() {
        eprintln!("{}", summary.sql_line());
        for (function, d) in &distributions {
            if let Some(s) = d.summary(TERMINAL_BINS) {
                eprint!("{}", render(function, &s));
            }
        }
    }
    if let Some(path) = &args.plot {
        let several = summary.score_by_function.len() > 1;
        for (function, s) in &summary.score_by_function {
            let file = if several { suffixed(path, function) } else { path.clone() };
            let title = format!("{} · {function} · {} rows scored", resolved.model, s.count);
            write_histogram(&file, s, &title, Measure::Scores)?;
        }
    }
    if let Some(path) = &args.stats_json {
        summary.write_json(path)?;
    }
    result
}

/// `scores.svg` + `skywork_score_chat` → `scores-skywork_score_chat.svg`.
fn suffixed(path: &std::path::Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!("{stem}-{suffix}{ext}"))
}

/// Runs the statements (or the shell) on `ctx`, a local session or one on a cluster.
async fn run_session(
    args: &SqlArgs,
    ctx: SessionContext,
    service: &Arc<ScoringService>,
    cluster: Option<&[(String, String)]>,
) -> Result<()> {
    let on_cluster = cluster.is_some();
    for spec in &args.tables {
        let (name, path) = spec.split_once('=').with_context(|| format!("-t {spec}: expected NAME=PATH"))?;
        let mut path = PathBuf::from(path);
        if !path.exists() {
            bail!("-t {spec}: {} does not exist", path.display());
        }
        if on_cluster {
            // The scheduler and the executors resolve paths in their own working directories.
            path = std::fs::canonicalize(&path).with_context(|| format!("-t {spec}"))?;
        }
        register_table(&ctx, name, &path).await.with_context(|| format!("registering table {name}"))?;
    }
    let print_options = PrintOptions {
        format: args.format,
        quiet: true,
        maxrows: args.maxrows,
        color: false,
        instrumented_registry: Arc::new(InstrumentedObjectStoreRegistry::new()),
    };
    let commands = match (&args.query, &args.file) {
        (Some(q), _) => q.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => {
            let mut print_options = PrintOptions { quiet: false, ..print_options };
            eprintln!("skyscore sql: skywork_score(instruction, [input,] output) is available. \\q quits.");
            exec_from_repl(&ctx, &mut print_options).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            return Ok(());
        }
    };
    // COPY fixes its Parquet options when planned: load first so the files it writes carry the
    // model's metadata. (On a cluster the client loads no model; `finish_output` adds the
    // metadata to what the executors wrote.)
    let copies_scores = prepare_copies(&ctx, &commands, cluster).await?;
    if !on_cluster && copies_scores {
        let scorer = service.scorer().map_err(anyhow::Error::msg)?;
        set_parquet_metadata(&ctx, &scorer.facts().metadata(env!("CARGO_PKG_VERSION")));
    }
    let progress = ProgressTicker::start(service.clone(), !args.no_progress, args.cluster.clone());
    let result = match &args.output {
        Some(path) => write_query(&ctx, &commands, path, service, cluster).await,
        None => run_statements(&ctx, commands, &print_options, cluster).await,
    };
    progress.stop();
    result.map_err(|e| anyhow::anyhow!(tidy_cluster_error(&tidy_signature_error(&format!("{e:#}")))))
}

/// Rows scored and tokens/s while statements run, from the service's counters.
struct ProgressTicker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ProgressTicker {
    /// `cluster`: the scheduler's address; the client has no figures of its own then (the
    /// executors score), so the line says where the query runs and for how long.
    fn start(service: Arc<ScoringService>, enabled: bool, cluster: Option<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled {
            return Self { stop, handle: None };
        }
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("valid template"));
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                let s = service.stats();
                if let Some(url) = &cluster {
                    bar.set_message(format!("running on the cluster at {url}"));
                    bar.tick();
                } else if s.rows > 0 {
                    let secs = started.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!(
                        "{} rows scored by the model ({} from cache) · {:.0} tok/s",
                        s.model.model_rows,
                        s.cache_hits,
                        s.model.tokens as f64 / secs
                    ));
                    bar.tick();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            bar.finish_and_clear();
        });
        Self { stop, handle: Some(handle) }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
