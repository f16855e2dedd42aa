//! `skyscore score`: a table in, scores out, in input order. A thin adapter over
//! [`Engine::score_chunks`]: windows of the input table are the chunks, and the policy for rows
//! that cannot be scored (fail, or null with `--skip-invalid`) lives here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use datafusion::arrow::array::{ArrayRef, Float32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use skyscore_core::{Conversation, RowScore, ScoreDistribution, Scored, TokenLengths};

use super::distribution::{render, DETAILED_BINS, TERMINAL_BINS};
use super::engine_args::EngineArgs;
use super::progress::Progress;
use crate::io::paths::OutputKind;
use crate::io::{open_input, OutputWriter};
use crate::plot::{write_histogram, Measure};
use crate::run::{check_report_paths, RunSummary};
use skyscore_engine::{ConversationChunk, Engine};
use skyscore_udf::columns::{
    added_column_clash, batch_conversations, row_label, scored_columns, scored_fields, ColumnNames,
};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  skyscore score --model sample_data/models/tiny-llama --input sample_data/sft_sample.parquet --output scores.jsonl
  skyscore score --config scorer.yaml --input sft.jsonl --output scored.parquet --keep-columns

Flags override the YAML config (name, model, max_length, batch_size, truncation_side, ...).
Hub ids resolve through the Hugging Face cache (HF_HOME / HF_HUB_CACHE); HF_TOKEN is used for
gated models; HF_HUB_OFFLINE=1 uses the cache only.")]
pub struct ScoreArgs {
    /// Input table: .jsonl, .json (array) or .parquet, with Alpaca columns instruction,
    /// input (optional) and output.
    #[arg(long, short)]
    pub input: PathBuf,
    /// Output file: .jsonl, .json or .parquet. Rows come out in input order.
    #[arg(long, short)]
    pub output: PathBuf,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Column holding the row id [default: `id` when present, else the row index].
    #[arg(long)]
    pub id_column: Option<String>,
    #[arg(long, default_value = "instruction")]
    pub instruction_column: String,
    #[arg(long, default_value = "input")]
    pub input_column: String,
    /// Column holding the response (GPTeacher-style files call it `response`).
    #[arg(long, default_value = "output")]
    pub output_column: String,
    /// Carry all input columns through and add score, num_tokens and truncated.
    #[arg(long)]
    pub keep_columns: bool,
    /// Give rows that cannot be scored (a NULL instruction/output, a prompt the template
    /// refuses, a non-finite score) a null score, and skip JSONL lines that are not a JSON
    /// object, instead of failing; all are counted as skipped.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Write the end-of-run figures as JSON (the score distribution included).
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
    /// Draw the histogram of the scores, quantiles marked, to FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Draw the histogram of the rows' token lengths before truncation, quantiles marked, to
    /// FILE.svg or FILE.png (to choose a --max-length).
    #[arg(long, value_name = "FILE")]
    pub plot_lengths: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let started = Instant::now();
    let resolved = args.engine.resolve()?;
    check_report_paths(args.stats_json.as_deref(), args.plot.as_deref())?;
    if let Some(path) = &args.plot_lengths {
        crate::plot::check_plot_path(path)?;
    }
    let names = ColumnNames {
        instruction: args.instruction_column.clone(),
        input: args.input_column.clone(),
        output: args.output_column.clone(),
        id: args.id_column.clone(),
    };
    crate::io::paths::check_not_input(&args.input, &args.output)?;
    // Refused now, not after the model has loaded: an output that is a folder or has no format.
    crate::io::OutputFormat::from_path(&args.output)?;
    crate::io::paths::check_target(&args.output, OutputKind::File, std::slice::from_ref(&args.input))?;
    let input = open_input(&args.input, resolved.options.chunk_rows(), args.skip_invalid)?;
    let skipped_lines = input.skipped.clone();
    let file = args.input.display().to_string();
    names.check(&input.schema, &file).map_err(anyhow::Error::msg)?;
    let id_column = names.id_column(&input.schema).map(str::to_string);
    let out_schema = output_schema(&input.schema, id_column.as_deref(), args.keep_columns)?;

    let engine = Engine::load(&resolved.model, &resolved.options)?;
    let mut summary = RunSummary::new(&resolved);
    summary.load_s = Some(started.elapsed().as_secs_f64());
    let mut writer = OutputWriter::create(&args.output, out_schema.clone(), engine.metadata())?;
    let progress = Progress::new(input.num_rows, !args.no_progress);
    let mut distribution = ScoreDistribution::new();
    let mut lengths = TokenLengths::new();

    let (mut first_row, names) = (0, &names);
    let windows = input.batches.map(move |batch| {
        let window = batch.map(|batch| Window { batch, first_row, names });
        first_row += window.as_ref().map_or(0, |w| w.batch.num_rows());
        window
    });
    let on_batch = |rows: usize, tokens: usize| progress.advance(rows, tokens);
    let result = engine
        .score_chunks(windows, &on_batch, |window, scored| {
            let rows = apply_row_policy(&window, id_column.as_deref(), scored, args.skip_invalid, &mut summary)?;
            for row in rows.iter().flatten() {
                distribution.add(row.score as f64);
                lengths.add(row);
            }
            progress.advance(rows.iter().filter(|r| r.is_none()).count(), 0);
            let out = build_output(&out_schema, &window, id_column.as_deref(), &rows, args.keep_columns)?;
            writer.write(&out)
        })
        .with_context(|| format!("scoring {file}"));
    progress.finish();
    if let Err(e) = result {
        writer.abandon();
        let (committed, outcome) = (engine.committed_rows(), engine.store_outcome());
        if let Some(path) = engine.store_path() {
            eprintln!(
                "{committed} rows of this run were scored and saved in the score store {}{}; {} rows were done before it stopped",
                path.display(),
                match outcome.unsaved_rows {
                    0 => String::new(),
                    n => format!(" ({n} more were scored but not saved: the store failed)"),
                },
                summary.rows
            );
        }
        crate::interrupt::record_kept(crate::interrupt::Kept {
            store: engine.store_path().map(Path::to_path_buf),
            committed,
            unsaved: outcome.unsaved_rows,
            store_failure: outcome.store_failure,
        });
        return Err(e);
    }
    writer.finish()?;

    summary.skipped_rows += crate::io::jsonl::skipped(&skipped_lines);
    summary.store = engine.store_outcome();
    summary.finish(started.elapsed().as_secs_f64());
    summary.distribution = distribution.summary(DETAILED_BINS);
    summary.token_lengths = lengths.summary(engine.checkpoint().arch.max_positions());
    eprintln!("{}", summary.line());
    if let Some(s) = distribution.summary(TERMINAL_BINS) {
        eprint!("{}", render("scores", &s));
    }
    if let (Some(path), Some(s)) = (&args.plot, &summary.distribution) {
        write_histogram(path, s, &format!("{} · {} rows scored", resolved.model, s.count), Measure::Scores)?;
    }
    if let (Some(path), Some(s)) = (&args.plot_lengths, lengths.distribution(DETAILED_BINS)) {
        let title = format!("{} · {} rows · max_length {}", resolved.model, s.count, resolved.options.max_length);
        write_histogram(path, &s, &title, Measure::Tokens)?;
    }
    if let Some(path) = &args.stats_json {
        summary.write_json(path)?;
    }
    Ok(())
}

/// One window of the input table: a chunk for the engine.
struct Window<'n> {
    batch: RecordBatch,
    /// Rows of the table before this window (numbers rows in messages and default ids).
    first_row: usize,
    names: &'n ColumnNames,
}

impl ConversationChunk for Window<'_> {
    fn conversations(&self) -> Vec<Result<Conversation<'_>, String>> {
        batch_conversations(&self.batch, self.names)
    }
}

fn apply_row_policy(
    window: &Window,
    id_column: Option<&str>,
    scored: Scored,
    skip_invalid: bool,
    summary: &mut RunSummary,
) -> Result<Vec<Option<RowScore>>> {
    summary.rows += scored.rows.len();
    summary.stats += scored.stats;
    let mut rows = Vec::with_capacity(scored.rows.len());
    for (i, row) in scored.rows.into_iter().enumerate() {
        match row {
            Ok(score) => rows.push(Some(score)),
            Err(reason) if skip_invalid => {
                tracing::warn!(
                    "{}: {reason}; score set to null",
                    row_label(&window.batch, id_column, window.first_row, i)
                );
                summary.skipped_rows += 1;
                rows.push(None);
            }
            Err(reason) => {
                bail!(
                    "{}: {reason} (use --skip-invalid to score it as null)",
                    row_label(&window.batch, id_column, window.first_row, i)
                )
            }
        }
    }
    Ok(rows)
}

fn output_schema(input: &SchemaRef, id_column: Option<&str>, keep: bool) -> Result<SchemaRef> {
    let score = Field::new("score", DataType::Float32, true);
    if keep {
        if let Some(clash) = added_column_clash(input) {
            bail!("--keep-columns: the input already has a `{clash}` column");
        }
        return Ok(Arc::new(Schema::new(scored_fields(input))));
    }
    let id = match id_column {
        Some(c) => Field::new("id", input.field_with_name(c)?.data_type().clone(), true),
        None => Field::new("id", DataType::UInt64, false),
    };
    Ok(Arc::new(Schema::new(vec![id, score])))
}

fn build_output(
    schema: &SchemaRef,
    window: &Window,
    id_column: Option<&str>,
    rows: &[Option<RowScore>],
    keep: bool,
) -> Result<RecordBatch> {
    let batch = &window.batch;
    let columns: Vec<ArrayRef> = if keep {
        scored_columns(batch, rows)
    } else {
        let score: ArrayRef = Arc::new(rows.iter().map(|r| r.map(|r| r.score)).collect::<Float32Array>());
        let id: ArrayRef = match id_column.and_then(|c| batch.column_by_name(c)) {
            Some(col) => col.clone(),
            None => {
                Arc::new(UInt64Array::from_iter_values((0..batch.num_rows()).map(|i| (window.first_row + i) as u64)))
            }
        };
        vec![id, score]
    };
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
