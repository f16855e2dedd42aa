//! Running statements and writing results: `COPY ... TO` a local path ([`super::copy`]) and
//! `--output` write under a temporary name and reach their target only when complete (a failed
//! or interrupted statement leaves the target as it was), and Parquet outputs carry the
//! model's facts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement};
use datafusion_cli::exec::exec_from_commands;
use datafusion_cli::print_options::PrintOptions;
use skyscore_udf::{plan_calls_model, ScoringService};

use super::copy::{input_paths, LocalCopy};
use crate::io::format::TableFormat;
use crate::io::paths::{check_target, OutputKind, Placed, TempOutput};

/// Ballista reports a failed task as the debug form of nested errors (`... runtime execution
/// error: DataFusionError(Shared(External(DataFusionError(Execution("skywork_score: ...")))))`);
/// the innermost message is the one that helps, after the job's id.
pub fn tidy_cluster_error(message: &str) -> String {
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
pub fn tidy_signature_error(message: &str) -> String {
    const OURS: &str = "user-defined coercion failed with: Error during planning: ";
    if !message.contains("failed to match any signature") {
        return message.to_string();
    }
    let Some(start) = message.find(OURS).map(|i| i + OURS.len()) else { return message.to_string() };
    let rest = &message[start..];
    let end = rest.find(",Error during planning").or_else(|| rest.find('\n')).unwrap_or(rest.len());
    format!("Error during planning: {}", rest[..end].trim_end_matches('.'))
}

/// Checks every local `COPY` target before anything runs (a target inside an input table, a
/// file where a folder is asked, ... are refused before the model loads), and says whether one
/// of the COPYs runs the model. Statements that cannot be planned yet (a table an earlier
/// statement creates) count as "maybe" and are checked again when they run: loading the model
/// early costs nothing that the statement would not spend anyway.
pub async fn prepare_copies(ctx: &SessionContext, sql: &str, cluster: Option<&[(String, String)]>) -> Result<bool> {
    let Ok(statements) = DFParser::parse_sql(sql) else { return Ok(false) };
    let mut calls_model = false;
    for statement in statements {
        let Statement::CopyTo(copy) = statement else { continue };
        let planned = match LocalCopy::of(&copy, cluster.is_some())? {
            Some(local) => match local.check(ctx).await {
                Ok(plan) => Some(plan),
                // A refused target is an error now; a statement that cannot be planned yet is
                // checked again when it runs.
                Err(e) if e.downcast_ref::<datafusion::error::DataFusionError>().is_none() => return Err(e),
                Err(_) => None,
            },
            None => ctx.state().statement_to_plan(Statement::CopyTo(copy)).await.ok(),
        };
        calls_model |= planned.is_none_or(|plan| plan_calls_model(&plan));
    }
    Ok(calls_model)
}

/// Runs the statements as datafusion-cli would, except that a `COPY ... TO` a local path goes
/// through [`LocalCopy`]: written under a temporary name, moved into place when complete,
/// never over an input or a folder's other files.
pub async fn run_statements(
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
        let local = match &statement {
            Statement::CopyTo(copy) => LocalCopy::of(copy, cluster.is_some())?,
            _ => None,
        };
        let Some(copy) = local else {
            exec_from_commands(ctx, vec![statement.to_string()], print_options).await?;
            continue;
        };
        let started = Instant::now();
        let batches = copy.run(ctx, |temp, target| finish_output(temp, target, cluster)).await?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
        let format = ctx.task_ctx().session_config().options().format.clone();
        print_options.print_batches(schema, &batches, started, rows, &format)?;
    }
    Ok(())
}

/// Where an output goes: `path` as given, or on a cluster made absolute, since the executor
/// that writes it resolves paths in its own working directory.
fn output_target(path: &Path, cluster: Option<&[(String, String)]>) -> Result<PathBuf> {
    match cluster {
        Some(_) => crate::io::paths::absolute(path),
        None => Ok(path.to_path_buf()),
    }
}

/// Moves a complete output into place. On a cluster, a Parquet file first gets the model's
/// facts (and the skyscore version) in its key-value metadata, which the executor that wrote it
/// could not add: the client copies it once more (shared filesystem, as for the rename).
fn finish_output(temp: TempOutput, target: &Path, cluster: Option<&[(String, String)]>) -> Result<Placed> {
    let parquet_file = temp.path().is_file() && TableFormat::of_path(target) == Some(TableFormat::Parquet);
    match cluster {
        Some(facts) if parquet_file => {
            let mut metadata =
                vec![(skyscore_core::facts::keys::VERSION.to_string(), env!("CARGO_PKG_VERSION").to_string())];
            metadata.extend(facts.iter().cloned());
            let with_metadata = TempOutput::beside(target, OutputKind::File)?;
            crate::io::parquet_metadata::copy_with_metadata(temp.path(), with_metadata.path(), &metadata)
                .with_context(|| format!("{} was left as it was", target.display()))?;
            drop(temp);
            with_metadata.place(target)
        }
        _ => temp.place(target),
    }
}

/// Runs one query and streams its result into the file `path` (through a temporary file, so an
/// existing `path` stays until a complete result replaces it). A `path` that is a folder or one
/// of the query's inputs is refused before the query runs.
pub async fn write_query(
    ctx: &SessionContext,
    sql: &str,
    path: &Path,
    service: &ScoringService,
    cluster: Option<&[(String, String)]>,
) -> Result<()> {
    let path = &output_target(path, cluster)?;
    if TableFormat::of_path(path).is_none() || path.as_os_str().to_string_lossy().ends_with('/') {
        bail!("{}: unknown output format (use .parquet, .csv, .json or .jsonl)", path.display());
    }
    let df = ctx.sql(sql).await?;
    check_target(path, OutputKind::File, &input_paths(df.logical_plan()))?;
    let temp = TempOutput::beside(path, OutputKind::File)?;
    let rows = write_query_to(ctx, df, path, temp.path(), service, cluster.is_some()).await?;
    finish_output(temp, path, cluster)?;
    eprintln!("wrote {rows} rows to {}", path.display());
    Ok(())
}

async fn write_query_to(
    ctx: &SessionContext,
    df: datafusion::dataframe::DataFrame,
    path: &Path,
    temp: &Path,
    service: &ScoringService,
    on_cluster: bool,
) -> Result<u64> {
    let location = temp.to_str().context("output path is not UTF-8")?;
    let options = DataFrameWriteOptions::new().with_single_file_output(true);
    let written = match TableFormat::of_path(path) {
        Some(TableFormat::Parquet) => {
            let mut parquet = ctx.state().table_options().parquet.clone();
            if !on_cluster {
                if let Ok(scorer) = service.scorer() {
                    for (k, v) in scorer.facts().metadata(env!("CARGO_PKG_VERSION")) {
                        parquet.key_value_metadata.insert(k, Some(v));
                    }
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
