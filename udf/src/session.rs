//! SQL session setup: a `SessionContext` with the skyscore UDFs, `information_schema` (for
//! `SHOW FUNCTIONS`), tables registered from files, and score metadata on written Parquet.

use std::path::Path;
use std::sync::Arc;

use datafusion::common::{plan_err, Result};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionConfig, SessionContext};

use datafusion::execution::SessionStateBuilder;

use crate::plan::FilterBeforeModel;
use crate::service::ScoringService;

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
        .with_physical_optimizer_rule(Arc::new(FilterBeforeModel))
        .build();
    let ctx = SessionContext::new_with_state(state);
    crate::register(&ctx, service.clone());
    ctx
}

/// Registers a Parquet, CSV or JSON/JSONL file, or a directory of them, as table `name`.
/// The format comes from the extension (of the first file, for a directory).
pub async fn register_table(ctx: &SessionContext, name: &str, path: &Path) -> Result<()> {
    let Some(ext) = format_extension(path) else {
        return plan_err!(
            "{}: cannot tell the table format (use .parquet, .csv, .json or .jsonl files)",
            path.display()
        );
    };
    let location = path
        .to_str()
        .ok_or_else(|| datafusion::common::DataFusionError::Plan(format!("{}: path is not UTF-8", path.display())))?;
    let dotted = format!(".{ext}");
    match ext.as_str() {
        "parquet" | "pq" => {
            ctx.register_parquet(name, location, ParquetReadOptions::default().file_extension(&dotted)).await
        }
        "csv" => ctx.register_csv(name, location, CsvReadOptions::new().has_header(true).file_extension(&dotted)).await,
        "json" | "jsonl" | "ndjson" => {
            let mut options = JsonReadOptions::default().file_extension(&dotted);
            options.newline_delimited = !starts_with_bracket(path);
            ctx.register_json(name, location, options).await
        }
        other => plan_err!("{}: unsupported table format `{other}`", path.display()),
    }
}

fn format_extension(path: &Path) -> Option<String> {
    let ext_of = |p: &Path| p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        entries.sort();
        return entries.iter().filter(|p| p.is_file()).find_map(|p| ext_of(p));
    }
    ext_of(path)
}

/// A `.json` file holding one JSON array (rather than one object per line).
fn starts_with_bracket(path: &Path) -> bool {
    use std::io::Read;
    let file = if path.is_dir() { return false } else { std::fs::File::open(path) };
    let Ok(file) = file else { return false };
    std::io::BufReader::new(file).bytes().map_while(|b| b.ok()).find(|b| !b.is_ascii_whitespace()) == Some(b'[')
}

/// Adds key-value metadata (model, template hash, ...) to every Parquet file the session
/// writes, `COPY ... TO` included.
pub fn set_parquet_metadata(ctx: &SessionContext, metadata: &[(String, String)]) {
    let state = ctx.state_ref();
    let mut state = state.write();
    let kv = &mut state.table_options_mut().parquet.key_value_metadata;
    for (k, v) in metadata {
        kv.insert(k.clone(), Some(v.clone()));
    }
}
