//! SQL sessions of the app: a `SessionContext` with the skyscore UDFs and plan rule,
//! `information_schema` (for `SHOW FUNCTIONS`), tables registered from files, and score
//! metadata on the Parquet files it writes.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use skyscore_udf::ScoringService;

use crate::io::format::{json_is_array, TableFormat};

/// Rows per Parquet row group written by skyscore sessions.
pub const WRITE_ROW_GROUP_ROWS: usize = 65_536;

/// A session with `skywork_score` and `skywork_score_chat` registered over `service`, and the
/// plan rule that keeps the model above filters.
pub fn new_session(service: &Arc<ScoringService>, target_partitions: Option<usize>) -> SessionContext {
    // Parquet writers hold a whole row group in memory; DataFusion's default (1M rows) would let a
    // curation COPY's memory grow with the table, 64K rows keeps it flat.
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .set_usize("datafusion.execution.parquet.max_row_group_size", WRITE_ROW_GROUP_ROWS);
    if let Some(n) = target_partitions {
        config = config.with_target_partitions(n.max(1));
    }
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_physical_optimizer_rules(skyscore_udf::model_aware_rules())
        .build();
    // Files can be queried by path as in datafusion-cli: SELECT * FROM 'scored.parquet'.
    let ctx = SessionContext::new_with_state(state).enable_url_table();
    skyscore_udf::register(&ctx, service.clone());
    ctx
}

/// Registers a Parquet, CSV or JSON/JSONL file, or a directory of them, as table `name`.
/// The format comes from the extension (of the first file, for a directory).
pub async fn register_table(ctx: &SessionContext, name: &str, path: &Path) -> Result<()> {
    let Some(format) = TableFormat::of_path(path) else {
        bail!("{}: cannot tell the table format (use .parquet, .csv, .json or .jsonl files)", path.display());
    };
    let location = path.to_str().with_context(|| format!("{}: path is not UTF-8", path.display()))?;
    let dotted = TableFormat::dotted_extension(path);
    match format {
        TableFormat::Parquet => {
            ctx.register_parquet(name, location, ParquetReadOptions::default().file_extension(&dotted)).await?
        }
        TableFormat::Csv => {
            ctx.register_csv(name, location, CsvReadOptions::new().has_header(true).file_extension(&dotted)).await?
        }
        TableFormat::Json => {
            let mut options = JsonReadOptions::default().file_extension(&dotted);
            options.newline_delimited = !json_is_array(path)?;
            ctx.register_json(name, location, options).await?
        }
    }
    Ok(())
}

/// Adds key-value metadata (model, template hash, ...) to every Parquet file the session
/// writes, `COPY ... TO` and `--output` included.
pub fn set_parquet_metadata(ctx: &SessionContext, metadata: &[(String, String)]) {
    let state = ctx.state_ref();
    let mut state = state.write();
    let kv = &mut state.table_options_mut().parquet.key_value_metadata;
    for (k, v) in metadata {
        kv.insert(k.clone(), Some(v.clone()));
    }
}
