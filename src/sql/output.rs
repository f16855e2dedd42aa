//! Running statements and writing results: `COPY ... TO` a local path and `--output` write
//! under a temporary name and replace their target only when complete (a failed or interrupted
//! statement leaves an existing file as it was), and Parquet outputs carry the model's facts.

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

use crate::io::format::TableFormat;

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

/// Whether one of the statements is a `COPY` whose query runs the model. Statements that
/// cannot be planned yet (a table an earlier statement creates) count as "maybe": loading
/// the model early costs nothing that the statement would not spend anyway.
pub async fn copies_scores(ctx: &SessionContext, sql: &str) -> bool {
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
        match statement {
            Statement::CopyTo(mut copy) if !copy.target.contains("://") => {
                let target = output_target(Path::new(&copy.target), cluster)?;
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
fn output_target(path: &Path, cluster: Option<&[(String, String)]>) -> Result<PathBuf> {
    match cluster {
        Some(_) => crate::io::paths::absolute(path),
        None => Ok(path.to_path_buf()),
    }
}

/// Moves a complete output into place. On a cluster, a Parquet file first gets the model's
/// facts (and the skyscore version) in its key-value metadata, which the executor that wrote it
/// could not add: the client copies it once more (shared filesystem, as for the rename).
fn finish_output(temp: &Path, target: &Path, cluster: Option<&[(String, String)]>) -> Result<()> {
    let parquet_file = temp.is_file() && TableFormat::of_path(target) == Some(TableFormat::Parquet);
    match cluster {
        Some(facts) if parquet_file => {
            let mut metadata =
                vec![(skyscore_core::facts::keys::VERSION.to_string(), env!("CARGO_PKG_VERSION").to_string())];
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
pub async fn write_query(
    ctx: &SessionContext,
    sql: &str,
    path: &Path,
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
    path: &Path,
    temp: &Path,
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
