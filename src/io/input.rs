//! Reading an input table as a stream of record batches.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::reader::infer_json_schema_from_iterator;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::io::format::{json_is_array, TableFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputFormat {
    Jsonl,
    JsonArray,
    Parquet,
}

/// An opened input: its schema, its row count when known up front, and its batches.
pub struct InputTable {
    pub schema: SchemaRef,
    pub num_rows: Option<usize>,
    pub batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send>,
    /// Lines that were not rows and were skipped (JSON Lines with `skip_invalid`).
    pub skipped: Arc<AtomicUsize>,
}

/// Parquet by extension; JSON files told apart by their first non-blank byte (`[` is an
/// array, `{` is one object per line).
fn detect(path: &Path) -> Result<InputFormat> {
    match TableFormat::of_path(path) {
        Some(TableFormat::Parquet) => Ok(InputFormat::Parquet),
        Some(TableFormat::Json) if json_is_array(path)? => Ok(InputFormat::JsonArray),
        Some(TableFormat::Json) => Ok(InputFormat::Jsonl),
        _ => bail!("{}: unknown input format (use .parquet, .jsonl or .json)", path.display()),
    }
}

/// Opens a table for reading in batches of `batch_rows`. With `skip_invalid`, JSON lines that
/// are not one JSON object are skipped and counted (`InputTable::skipped`) instead of failing.
pub fn open_input(path: &Path, batch_rows: usize, skip_invalid: bool) -> Result<InputTable> {
    let mut skipped = Arc::new(AtomicUsize::new(0));
    let format = detect(path)?;
    let ctx = || format!("reading {}", path.display());
    let (schema, num_rows, batches): (SchemaRef, Option<usize>, Box<dyn Iterator<Item = Result<RecordBatch>> + Send>) =
        match format {
            InputFormat::Parquet => {
                let file = File::open(path).with_context(ctx)?;
                let builder = ParquetRecordBatchReaderBuilder::try_new(file).with_context(ctx)?;
                let rows = builder.metadata().file_metadata().num_rows() as usize;
                let schema = builder.schema().clone();
                let reader = builder.with_batch_size(batch_rows).build().with_context(ctx)?;
                let p = path.to_path_buf();
                let it = reader.map(move |b| b.with_context(|| format!("reading {}", p.display())));
                (schema, Some(rows), Box::new(it))
            }
            // Schemas are inferred from the data; a column holding both numbers and strings (ids
            // such as 7 and "edge-1") is inferred as a string column, and `coerce_primitive` lets
            // the numbers in it decode as their text instead of failing the file.
            InputFormat::Jsonl => {
                let table = super::jsonl::open(path, batch_rows, skip_invalid)?;
                skipped = table.skipped;
                (table.schema, Some(table.rows), table.batches)
            }
            InputFormat::JsonArray => {
                let file = BufReader::new(File::open(path).with_context(ctx)?);
                let values: Vec<serde_json::Value> = serde_json::from_reader(file).with_context(ctx)?;
                if let Some(i) = values.iter().position(|v| !v.is_object()) {
                    bail!("{}: element {i} of the JSON array is not an object", path.display());
                }
                let schema = Arc::new(infer_json_schema_from_iterator(values.iter().map(Ok)).with_context(ctx)?);
                let n = values.len();
                let mut decoder = ReaderBuilder::new(schema.clone())
                    .with_batch_size(batch_rows)
                    .with_coerce_primitive(true)
                    .build_decoder()?;
                let p = path.to_path_buf();
                let mut chunks = values.chunks(batch_rows.max(1)).map(|c| c.to_vec()).collect::<Vec<_>>().into_iter();
                let it = std::iter::from_fn(move || {
                    let chunk = chunks.next()?;
                    let res = decoder
                        .serialize(&chunk)
                        .and_then(|_| decoder.flush())
                        .map_err(anyhow::Error::from)
                        .and_then(|b| b.context("empty chunk"))
                        .with_context(|| format!("reading {}", p.display()));
                    Some(res)
                });
                (schema, Some(n), Box::new(it))
            }
        };
    Ok(InputTable { schema, num_rows, batches, skipped })
}
