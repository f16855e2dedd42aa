//! `skyscore score`: a table in, scores out, in input order.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float32Array, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use skyscore_udf::ScoreRequest;

use super::engine_args::EngineArgs;
use super::progress::Progress;
use super::summary::RunSummary;
use crate::encode::Encoded;
use crate::engine::{DeviceSpec, Engine};
use crate::io::{open_input, ColumnNames, OutputWriter, SftColumns};

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
    /// Give rows with a NULL instruction/output (or an unrenderable prompt) a null score
    /// instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Rows read, tokenized and length-sorted together (the next window is tokenized while
    /// the model works on this one). [default: 1024 on CPU, 16384 on GPU]
    #[arg(long)]
    pub window: Option<usize>,
    /// Write the end-of-run figures as JSON.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let started = Instant::now();
    let resolved = args.engine.resolve()?;
    let names = ColumnNames {
        instruction: args.instruction_column.clone(),
        input: args.input_column.clone(),
        output: args.output_column.clone(),
        id: args.id_column.clone(),
    };
    let window = args.window.unwrap_or(if resolved.options.on_gpu() { 16384 } else { 1024 });
    let input = open_input(&args.input, window.max(1))?;
    let file = args.input.display().to_string();
    names.check(&input.schema, &file)?;
    let id_column = names.id_column(&input.schema).map(str::to_string);
    let out_schema = output_schema(&input.schema, id_column.as_deref(), args.keep_columns)?;

    let engine = Engine::load(&resolved.model, &resolved.options)?;
    let load_s = started.elapsed().as_secs_f64();
    let mut writer = OutputWriter::create(&args.output, out_schema.clone(), engine.metadata())?;
    let mut summary = RunSummary {
        model: resolved.model.clone(),
        device: DeviceSpec::list_to_string(&resolved.options.devices),
        load_s: Some(load_s),
        dtype: format!("{:?}", engine.dtype()).to_lowercase(),
        max_length: resolved.options.max_length,
        batch_size: resolved.options.batch_size,
        ..Default::default()
    };
    let mut progress = Progress::new(input.num_rows, !args.no_progress);

    // Reading and tokenizing the next window (its own thread, rayon inside) overlaps the
    // forward passes of the current one; the channel holds one window so memory stays bounded.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared>>(1);
    let result = std::thread::scope(|scope| -> Result<()> {
        let (engine, names, id_column, args, file) = (&engine, &names, id_column.as_deref(), &args, &file);
        scope.spawn(move || {
            let mut first_row = 0;
            for batch in input.batches {
                let prepared = batch.and_then(|b| prepare_window(engine, b, names, id_column, args, first_row));
                let prepared = prepared.with_context(|| format!("scoring {file}"));
                let failed = prepared.is_err();
                first_row += prepared.as_ref().map_or(0, |p| p.batch.num_rows());
                if tx.send(prepared).is_err() || failed {
                    break;
                }
            }
        });
        for prepared in rx {
            let prepared = prepared?;
            let scored = score_window(engine, &prepared, &mut summary, &mut progress)
                .with_context(|| format!("scoring {file}"))?;
            let out = build_output(&out_schema, &prepared.batch, id_column, summary.rows, &scored, args.keep_columns)?;
            writer.write(&out)?;
            summary.rows += prepared.batch.num_rows();
        }
        Ok(())
    });
    progress.finish();
    if let Err(e) = result {
        writer.abandon();
        return Err(e);
    }
    writer.finish()?;

    summary.wall_s = started.elapsed().as_secs_f64();
    summary.tokens_per_s = summary.tokens as f64 / summary.wall_s.max(1e-9);
    eprintln!("{}", summary.line());
    if let Some(path) = &args.stats_json {
        summary.write_json(path)?;
    }
    Ok(())
}

/// Per-row results of one input batch (None where the row was skipped).
struct Scored {
    score: Vec<Option<f32>>,
    num_tokens: Vec<Option<u32>>,
    truncated: Vec<Option<bool>>,
}

/// One input window, checked and tokenized, waiting for the device.
struct Prepared {
    batch: RecordBatch,
    /// (row in the window, its tokens), for the rows that will be scored.
    valid: Vec<(usize, Encoded)>,
    skipped: usize,
}

/// Checks and tokenizes one input window; `first_row` (rows before it) numbers rows in
/// messages. Rows with a NULL required field or an unrenderable prompt are an error, or are
/// skipped (null score) with --skip-invalid.
fn prepare_window(
    engine: &Engine,
    batch: RecordBatch,
    names: &ColumnNames,
    id_column: Option<&str>,
    args: &ScoreArgs,
    first_row: usize,
) -> Result<Prepared> {
    let n = batch.num_rows();
    let describe = |i: usize| row_label(&batch, id_column, first_row, i);
    let cols = SftColumns::new(&batch, names)?;
    let mut requests: Vec<(usize, ScoreRequest)> = Vec::with_capacity(n);
    let mut skipped = 0;
    for i in 0..n {
        match (cols.instruction.get(i), cols.output.get(i)) {
            (Some(instruction), Some(output)) => {
                requests.push((i, ScoreRequest::new(instruction, cols.input.get(i), output)))
            }
            (ins, _) => {
                let column = if ins.is_none() { &names.instruction } else { &names.output };
                if !args.skip_invalid {
                    bail!("{}: column `{column}` is NULL (use --skip-invalid to score it as null)", describe(i));
                }
                tracing::warn!("{}: column `{column}` is NULL; score set to null", describe(i));
                skipped += 1;
            }
        }
    }
    let reqs: Vec<ScoreRequest> = requests.iter().map(|(_, r)| *r).collect();
    let encoded = engine.encoder().encode_all(&reqs);
    let mut valid: Vec<(usize, Encoded)> = Vec::with_capacity(encoded.len());
    for ((row, _), enc) in requests.iter().zip(encoded) {
        match enc {
            Ok(e) => valid.push((*row, e)),
            Err(e) if args.skip_invalid => {
                tracing::warn!("{}: {e}; score set to null", describe(*row));
                skipped += 1;
            }
            Err(e) => bail!("{}: {e}", describe(*row)),
        }
    }
    Ok(Prepared { batch, valid, skipped })
}

/// Runs one prepared window through the model.
fn score_window(
    engine: &Engine,
    prepared: &Prepared,
    summary: &mut RunSummary,
    progress: &mut Progress,
) -> Result<Scored> {
    let n = prepared.batch.num_rows();
    progress.advance(prepared.skipped, 0);
    let refs: Vec<&Encoded> = prepared.valid.iter().map(|(_, e)| e).collect();
    let model_started = Instant::now();
    let scored = engine.score_encoded(&refs, |rows, tokens| progress.advance(rows, tokens))?;
    summary.model_s += model_started.elapsed().as_secs_f64();
    let stats = scored.stats;

    let mut out = Scored { score: vec![None; n], num_tokens: vec![None; n], truncated: vec![None; n] };
    for ((row, enc), score) in prepared.valid.iter().zip(scored.scores) {
        out.score[*row] = Some(score);
        out.num_tokens[*row] = Some(enc.ids.len() as u32);
        out.truncated[*row] = Some(enc.truncated);
    }
    summary.model_rows += stats.rows;
    summary.tokens += stats.tokens;
    summary.padded_tokens += stats.padded_tokens;
    summary.batches += stats.batches;
    summary.skipped_rows += prepared.skipped;
    summary.truncated_rows += stats.truncated_rows;
    Ok(out)
}

/// "row 12 (id \"abc\")": what an error message names.
fn row_label(batch: &RecordBatch, id_column: Option<&str>, first_row: usize, i: usize) -> String {
    let index = first_row + i;
    let id = id_column
        .and_then(|c| batch.column_by_name(c))
        .and_then(|a| datafusion::arrow::util::display::array_value_to_string(a, i).ok());
    match id {
        Some(id) => format!("row {index} (id {id})"),
        None => format!("row {index}"),
    }
}

const ADDED_COLUMNS: [&str; 3] = ["score", "num_tokens", "truncated"];

fn output_schema(input: &SchemaRef, id_column: Option<&str>, keep: bool) -> Result<SchemaRef> {
    let score = Field::new("score", DataType::Float32, true);
    if keep {
        if let Some(clash) = ADDED_COLUMNS.iter().find(|c| input.field_with_name(c).is_ok()) {
            bail!("--keep-columns: the input already has a `{clash}` column");
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(score);
        fields.push(Field::new("num_tokens", DataType::UInt32, true));
        fields.push(Field::new("truncated", DataType::Boolean, true));
        return Ok(Arc::new(Schema::new(fields)));
    }
    let id = match id_column {
        Some(c) => Field::new("id", input.field_with_name(c)?.data_type().clone(), true),
        None => Field::new("id", DataType::UInt64, false),
    };
    Ok(Arc::new(Schema::new(vec![id, score])))
}

fn build_output(
    schema: &SchemaRef,
    batch: &RecordBatch,
    id_column: Option<&str>,
    first_row: usize,
    scored: &Scored,
    keep: bool,
) -> Result<RecordBatch> {
    let score: ArrayRef = Arc::new(Float32Array::from(scored.score.clone()));
    let columns: Vec<ArrayRef> = if keep {
        let mut cols = batch.columns().to_vec();
        cols.push(score);
        cols.push(Arc::new(UInt32Array::from(scored.num_tokens.clone())));
        cols.push(Arc::new(BooleanArray::from(scored.truncated.clone())));
        cols
    } else {
        let id: ArrayRef = match id_column.and_then(|c| batch.column_by_name(c)) {
            Some(col) => col.clone(),
            None => Arc::new(UInt64Array::from_iter_values((0..batch.num_rows()).map(|i| (first_row + i) as u64))),
        };
        vec![id, score]
    };
    debug_assert!(columns.iter().all(|c| c.len() == batch.num_rows()));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
