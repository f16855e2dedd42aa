//! `skyscore sql`: SQL over Parquet/CSV/JSON tables with `skywork_score` available, as one
//! query, a file of statements, or an interactive shell (datafusion-cli's).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement};
use datafusion_cli::exec::{exec_from_commands, exec_from_repl};
use datafusion_cli::object_storage::instrumented::InstrumentedObjectStoreRegistry;
use datafusion_cli::print_format::PrintFormat;
use datafusion_cli::print_options::{MaxRows, PrintOptions};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use skyscore_udf::{plan_calls_model, Scorer, ScoringService};

use super::distribution::{render, TERMINAL_BINS};
use super::engine_args::EngineArgs;
use super::summary::{check_report_paths, RunSummary};
use crate::engine::Engine;
use crate::plot::write_histogram;
use crate::session::{new_session, register_table, set_parquet_metadata};
use crate::tables::TableFormat;

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
    let (model, options) = (resolved.model.clone(), resolved.options.clone());
    let service = ScoringService::lazy(
        Box::new(move || {
            let engine = Engine::load(&model, &options).map_err(|e| format!("{e:#}"))?;
            Ok(Arc::new(engine) as Arc<dyn Scorer>)
        }),
        args.cache_entries,
    );
    let ctx = new_session(&service, args.partitions);
    let result = runtime.block_on(run_session(&args, ctx, &service, None));

    let summary = RunSummary::of_service(&service, &resolved, started.elapsed().as_secs_f64());
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
            write_histogram(&file, s, &format!("{} · {function} · {} rows scored", resolved.model, s.count))?;
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
    if !on_cluster && copies_scores(&ctx, &commands).await {
        let scorer = service.scorer().map_err(anyhow::Error::msg)?;
        set_parquet_metadata(&ctx, &scorer.metadata());
    }
    let progress = ProgressTicker::start(service.clone(), !args.no_progress, args.cluster.clone());
    let result = match &args.output {
        Some(path) => write_query(&ctx, &commands, path, service, cluster).await,
        None => run_statements(&ctx, commands, &print_options, cluster).await,
    };
    progress.stop();
    result.map_err(|e| anyhow::anyhow!(tidy_cluster_error(&tidy_signature_error(&format!("{e:#}")))))
}

/// Ballista reports a failed task as the debug form of nested errors (`... runtime execution
/// error: DataFusionError(Shared(External(DataFusionError(Execution("skywork_score: ...")))))`);
/// the innermost message is the one that helps, after the job's id.
fn tidy_cluster_error(message: &str) -> String {
    const WRAPPED: &str = "Execution(\"";
    let Some(start) = message.rfind(WRAPPED).map(|i| i + WRAPPED.len()) else { return message.to_string() };
    let rest = &message[start..];
    let inner = &rest[..rest.find("\")").unwrap_or(rest.len())];
    let inner = inner.replace("\\\"", "\"").replace("\\n", "\n");
    match message.find("Job ").and_then(|i| message[i..].split_whitespace().nth(1)) {
        Some(job) => format!("cluster job {job} failed: {inner}"),
        None => format!("on the cluster: {inner}"),
    }
}

/// DataFusion reports a call that matches none of a function's signatures as an internal
/// error ("likely caused by a bug in DataFusion") listing every variant; for skyscore's
/// functions, the message of their own argument check is the one that helps.
fn tidy_signature_error(message: &str) -> String {
    const OURS: &str = "user-defined coercion failed with: Error during planning: ";
    if !message.contains("failed to match any signature") {
        return message.to_string();
    }
    let Some(start) = message.find(OURS).map(|i| i + OURS.len()) else { return message.to_string() };
    let rest = &message[start..];
    let end = rest.find(",Error during planning").or_else(|| rest.find('\n')).unwrap_or(rest.len());
    format!("Error during planning: {}", rest[..end].trim_end_matches('.'))
}

/// Whether one of the statements is a `COPY` whose query runs the model. Statements that
/// cannot be planned yet (a table an earlier statement creates) count as "maybe": loading
/// the model early costs nothing that the statement would not spend anyway.
async fn copies_scores(ctx: &SessionContext, sql: &str) -> bool {
    let Ok(statements) = DFParser::parse_sql(sql) else { return false };
    let state = ctx.state();
    for statement in statements {
        if !matches!(statement, Statement::CopyTo(_)) {
            continue;
        }
        match state.statement_to_plan(statement).await {
            Ok(plan) if !plan_calls_model(&plan) => {}
            _ => return true,
        }
    }
    false
}

/// Runs the statements as datafusion-cli would, except that a `COPY ... TO` a local path writes
/// under a temporary name and replaces its target only when complete: a failed or interrupted
/// COPY leaves an existing file as it was and no half-written one behind.
async fn run_statements(
    ctx: &SessionContext,
    commands: String,
    print_options: &PrintOptions,
    cluster: Option<&[(String, String)]>,
) -> Result<()> {
    let Ok(statements) = DFParser::parse_sql(&commands) else {
        // Let datafusion-cli report the syntax error as it does.
        return exec_from_commands(ctx, vec![commands], print_options).await.map_err(anyhow::Error::from);
    };
    if !statements.iter().any(|s| matches!(s, Statement::CopyTo(c) if !c.target.contains("://"))) {
        return exec_from_commands(ctx, vec![commands], print_options).await.map_err(anyhow::Error::from);
    }
    for statement in statements {
        match statement {
            Statement::CopyTo(mut copy) if !copy.target.contains("://") => {
                let target = output_target(std::path::Path::new(&copy.target), cluster)?;
                crate::io::paths::remove_stale_temps(&target);
                let temp = crate::io::paths::temp_sibling(&target);
                copy.target = temp.to_str().context("COPY target is not UTF-8")?.to_string();
                let started = Instant::now();
                let written = async {
                    let plan = ctx.state().statement_to_plan(Statement::CopyTo(copy)).await?;
                    let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
                    Ok::<_, datafusion::error::DataFusionError>(batches)
                }
                .await;
                let batches = match written {
                    Ok(b) => b,
                    Err(e) => {
                        crate::io::paths::remove_temp(&temp);
                        return Err(e).with_context(|| {
                            format!("COPY to {} ({} was left as it was)", target.display(), target.display())
                        });
                    }
                };
                finish_output(&temp, &target, cluster)?;
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                let schema = batches
                    .first()
                    .map(|b| b.schema())
                    .unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
                let format = ctx.task_ctx().session_config().options().format.clone();
                print_options.print_batches(schema, &batches, started, rows, &format)?;
            }
            other => exec_from_commands(ctx, vec![other.to_string()], print_options).await?,
        }
    }
    Ok(())
}

/// Where an output goes: `path` as given, or on a cluster made absolute, since the executor
/// that writes it resolves paths in its own working directory.
fn output_target(path: &std::path::Path, cluster: Option<&[(String, String)]>) -> Result<PathBuf> {
    match cluster {
        Some(_) => crate::io::paths::absolute(path),
        None => Ok(path.to_path_buf()),
    }
}

/// Moves a complete output into place. On a cluster, a Parquet file first gets the model's
/// facts (and the skyscore version) in its key-value metadata, which the executor that wrote it
/// could not add: the client copies it once more (shared filesystem, as for the rename).
fn finish_output(temp: &std::path::Path, target: &std::path::Path, cluster: Option<&[(String, String)]>) -> Result<()> {
    let parquet_file = temp.is_file() && TableFormat::of_path(target) == Some(TableFormat::Parquet);
    match cluster {
        Some(facts) if parquet_file => {
            let mut metadata = vec![("skyscore.version".to_string(), env!("CARGO_PKG_VERSION").to_string())];
            metadata.extend(facts.iter().cloned());
            let with_metadata = crate::io::paths::temp_sibling(target);
            let copied = crate::io::parquet_metadata::copy_with_metadata(temp, &with_metadata, &metadata);
            crate::io::paths::remove_temp(temp);
            if let Err(e) = copied {
                crate::io::paths::remove_temp(&with_metadata);
                return Err(e).with_context(|| format!("{} was left as it was", target.display()));
            }
            crate::io::paths::replace_with(&with_metadata, target)
        }
        _ => crate::io::paths::replace_with(temp, target),
    }
}

/// Runs one query and streams its result into `path` (through a temporary file, so an existing
/// `path` stays until a complete result replaces it).
async fn write_query(
    ctx: &SessionContext,
    sql: &str,
    path: &std::path::Path,
    service: &ScoringService,
    cluster: Option<&[(String, String)]>,
) -> Result<()> {
    let path = &output_target(path, cluster)?;
    crate::io::paths::remove_stale_temps(path);
    let temp = crate::io::paths::temp_sibling(path);
    let result = write_query_to(ctx, sql, path, &temp, service, cluster.is_some()).await;
    match result {
        Ok(rows) => {
            finish_output(&temp, path, cluster)?;
            eprintln!("wrote {rows} rows to {}", path.display());
            Ok(())
        }
        Err(e) => {
            crate::io::paths::remove_temp(&temp);
            Err(e)
        }
    }
}

async fn write_query_to(
    ctx: &SessionContext,
    sql: &str,
    path: &std::path::Path,
    temp: &std::path::Path,
    service: &ScoringService,
    on_cluster: bool,
) -> Result<u64> {
    let location = temp.to_str().context("output path is not UTF-8")?;
    let df = ctx.sql(sql).await?;
    let options = DataFrameWriteOptions::new().with_single_file_output(true);
    let written = match TableFormat::of_path(path) {
        Some(TableFormat::Parquet) => {
            let mut parquet = ctx.state().table_options().parquet.clone();
            if !on_cluster {
                for (k, v) in service.scorer().map(|s| s.metadata()).unwrap_or_default() {
                    parquet.key_value_metadata.insert(k, Some(v));
                }
            }
            df.write_parquet(location, options, Some(parquet)).await?
        }
        Some(TableFormat::Csv) => df.write_csv(location, options, None).await?,
        Some(TableFormat::Json) => df.write_json(location, options, None).await?,
        None => bail!("{}: unknown output format (use .parquet, .csv, .json or .jsonl)", path.display()),
    };
    let rows: u64 = written
        .iter()
        .filter_map(|b| b.column(0).as_any().downcast_ref::<datafusion::arrow::array::UInt64Array>())
        .map(|a| a.iter().flatten().sum::<u64>())
        .sum();
    Ok(rows)
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

#[cfg(test)]
mod tests {
    use super::{tidy_cluster_error, tidy_signature_error};

    #[test]
    fn cluster_errors_show_the_innermost_message() {
        let ballista = r#"Execution error: Job 038GW9JP8W000 failed: Job failed due to stage 1 failed: Task failed due to runtime execution error: DataFusionError(Shared(External(DataFusionError(Execution("skywork_score: scoring failed: skyscore.max_length: expected \"2048\", here 4096")))))"#;
        assert_eq!(
            tidy_cluster_error(ballista),
            "cluster job 038GW9JP8W000 failed: skywork_score: scoring failed: skyscore.max_length: expected \"2048\", here 4096"
        );
        assert_eq!(tidy_cluster_error("table 'x' not found"), "table 'x' not found");
    }

    #[test]
    fn signature_errors_show_our_message() {
        let df = "Error during planning: Internal error: Function 'skywork_score' failed to match any signature, errors: Execution error: Function 'skywork_score' user-defined coercion failed with: Error during planning: skywork_score takes (instruction, input, output) or (instruction, output), got 1 arguments,Error during planning: Function 'skywork_score' expects 3 arguments but received 1.\nThis issue was likely caused by a bug in DataFusion's code.";
        assert_eq!(
            tidy_signature_error(df),
            "Error during planning: skywork_score takes (instruction, input, output) or (instruction, output), got 1 arguments"
        );
        assert_eq!(tidy_signature_error("table 'x' not found"), "table 'x' not found");
    }
}
