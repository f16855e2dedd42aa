//! Writing the scored table. Output goes to a temporary name unique to this run, next to the
//! target, and is renamed into place only when complete: a failed or killed run never leaves a
//! truncated file that looks finished, never touches an existing target, and two runs never
//! write into each other's files.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::writer::{JsonArray, LineDelimited, Writer as JsonWriter, WriterBuilder};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;

use super::paths::{OutputKind, TempOutput};
use crate::io::format::TableFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Jsonl,
    JsonArray,
    Parquet,
}

impl OutputFormat {
    /// `.parquet`/`.pq`, `.json` (one array) or `.jsonl`/`.ndjson` (one object per line).
    pub fn from_path(path: &Path) -> Result<Self> {
        let is_json_array = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Ok(match TableFormat::of_path(path) {
            Some(TableFormat::Parquet) => OutputFormat::Parquet,
            Some(TableFormat::Json) if is_json_array => OutputFormat::JsonArray,
            Some(TableFormat::Json) => OutputFormat::Jsonl,
            _ => bail!("{}: unknown output format (use .jsonl, .json or .parquet)", path.display()),
        })
    }
}

enum Sink {
    Jsonl(JsonWriter<BufWriter<File>, LineDelimited>),
    JsonArray(JsonWriter<BufWriter<File>, JsonArray>),
    Parquet(ArrowWriter<File>),
}

pub struct OutputWriter {
    sink: Sink,
    /// Removed with its lock if the run fails or is killed before [`Self::finish`].
    partial: TempOutput,
    path: PathBuf,
}

impl OutputWriter {
    /// `metadata` becomes Parquet key-value metadata (ignored for JSON).
    pub fn create(path: &Path, schema: SchemaRef, metadata: Vec<(String, String)>) -> Result<Self> {
        let format = OutputFormat::from_path(path)?;
        let partial = TempOutput::beside(path, OutputKind::File)?;
        let file =
            File::create(partial.path()).with_context(|| format!("cannot create {}", partial.path().display()))?;
        let sink = match format {
            OutputFormat::Jsonl => {
                Sink::Jsonl(WriterBuilder::new().with_explicit_nulls(true).build(BufWriter::new(file)))
            }
            OutputFormat::JsonArray => {
                Sink::JsonArray(WriterBuilder::new().with_explicit_nulls(true).build(BufWriter::new(file)))
            }
            OutputFormat::Parquet => {
                let kv = metadata.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .set_key_value_metadata(Some(kv))
                    .build();
                Sink::Parquet(ArrowWriter::try_new(file, schema, Some(props))?)
            }
        };
        Ok(Self { sink, partial, path: path.to_path_buf() })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let res = match &mut self.sink {
            Sink::Jsonl(w) => w.write(batch).map_err(anyhow::Error::from),
            Sink::JsonArray(w) => w.write(batch).map_err(anyhow::Error::from),
            Sink::Parquet(w) => w.write(batch).map_err(anyhow::Error::from),
        };
        res.with_context(|| format!("writing {}", self.partial.path().display()))
    }

    /// Flushes, closes and moves the file into place.
    pub fn finish(self) -> Result<()> {
        let shown = self.partial.path().display().to_string();
        let ctx = || format!("writing {shown}");
        match self.sink {
            Sink::Jsonl(mut w) => {
                w.finish().with_context(ctx)?;
                std::io::Write::flush(&mut w.into_inner()).with_context(ctx)?;
            }
            Sink::JsonArray(mut w) => {
                w.finish().with_context(ctx)?;
                std::io::Write::flush(&mut w.into_inner()).with_context(ctx)?;
            }
            Sink::Parquet(w) => {
                w.close().with_context(ctx)?;
            }
        }
        self.partial.place(&self.path)?;
        Ok(())
    }

    /// Removes the partial file after a failure.
    pub fn abandon(self) {
        drop(self.partial);
    }
}

/// Fails now, with the path in the message, when `path` could not be written at the end of a
/// run (its folder is missing or read-only): a long job must not discover that after its work.
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("{}: the folder {} does not exist", path.display(), dir.display());
    }
    if path.is_dir() {
        bail!("{}: is a folder", path.display());
    }
    let probe = dir.join(format!(".skyscore-write-check-{}", std::process::id()));
    File::create(&probe).with_context(|| format!("{}: cannot write in {}", path.display(), dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
