//! `skyscore stats`: the score distribution of a file scored earlier, what a threshold would
//! keep, and (for files written with `--keep-columns`) the rows' token lengths.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, UInt32Type};
use serde::Serialize;
use skyscore_core::{DistributionSummary, LengthSummary, RowScore, ScoreDistribution, TokenLengths};

use super::distribution::{render, DETAILED_BINS, TERMINAL_BINS};
use crate::io::open_input;
use crate::plot::{write_histogram, Measure};
use crate::run::check_report_paths;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  skyscore stats scored.parquet
  skyscore stats scores.jsonl --keep-top 30 --plot scores.svg
  skyscore stats scored.parquet --column reward --keep-above 2.5

Quantiles come from a t-digest (streaming, bounded memory): within about 1% of the rows of the
exact quantile. Counts of --keep-above and the histogram are exact.")]
pub struct StatsArgs {
    /// A scored table: .parquet, .jsonl or .json (array), as `skyscore score` or `skyscore sql` wrote it.
    pub file: PathBuf,
    /// The column holding the scores (any numeric type).
    #[arg(long, default_value = "score")]
    pub column: String,
    /// Count the rows a threshold keeps: score > X.
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub keep_above: Option<f64>,
    /// Count the rows kept by keeping the best P percent, and the score that cuts there.
    #[arg(long, value_name = "P", value_parser = parse_percent)]
    pub keep_top: Option<f64>,
    /// Draw the histogram, quantiles marked, to FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Draw the histogram of the rows' token lengths to FILE.svg or FILE.png (files written
    /// with --keep-columns, which carry `num_tokens` and `truncated`).
    #[arg(long, value_name = "FILE")]
    pub plot_lengths: Option<PathBuf>,
    /// Write the figures as JSON.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
}

/// `30`, `30%` or `12.5`: a share in (0, 100].
fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| format!("`{s}` is not a percentage"))?;
    if v > 0.0 && v <= 100.0 {
        Ok(v)
    } else {
        Err(format!("`{s}`: a percentage must be in (0, 100]"))
    }
}

#[derive(Debug, Serialize)]
struct StatsReport {
    file: String,
    column: String,
    rows: usize,
    null_scores: usize,
    #[serde(flatten)]
    distribution: Option<DistributionSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_above: Option<KeepAbove>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_top: Option<KeepTop>,
    /// From the `num_tokens` and `truncated` columns, when the file has them (the token count of
    /// a truncated row is what the model read: its full length is not in the file).
    #[serde(skip_serializing_if = "Option::is_none")]
    token_lengths: Option<LengthSummary>,
}

#[derive(Debug, Serialize)]
struct KeepAbove {
    threshold: f64,
    rows: usize,
}

#[derive(Debug, Serialize)]
struct KeepTop {
    percent: f64,
    rows: usize,
    /// The score at the cut (rows at or above it are kept), from the t-digest.
    threshold: f64,
}

pub fn run(args: StatsArgs) -> Result<()> {
    check_report_paths(args.stats_json.as_deref(), args.plot.as_deref())?;
    let file = args.file.display().to_string();
    let input = open_input(&args.file, 65_536, false)?;
    let field = input.schema.field_with_name(&args.column).map_err(|_| {
        let columns: Vec<&str> = input.schema.fields().iter().map(|f| f.name().as_str()).collect();
        anyhow::anyhow!("{file}: no column `{}` (columns: {})", args.column, columns.join(", "))
    })?;
    if !field.data_type().is_numeric() {
        bail!("{file}: column `{}` has type {}; scores are numbers", args.column, field.data_type());
    }
    let model = input.schema.metadata().get(skyscore_core::facts::keys::MODEL).cloned();

    let has_lengths = ["num_tokens", "truncated"].iter().all(|c| input.schema.field_with_name(c).is_ok());
    if args.plot_lengths.is_some() && !has_lengths {
        bail!("{file}: --plot-lengths needs the columns num_tokens and truncated (score with --keep-columns)");
    }
    if let Some(path) = &args.plot_lengths {
        crate::plot::check_plot_path(path)?;
    }
    let max_length = input.schema.metadata().get(skyscore_core::facts::keys::MAX_LENGTH).and_then(|v| v.parse().ok());
    let mut distribution = ScoreDistribution::new();
    let mut lengths = TokenLengths::new();
    let (mut rows, mut nulls, mut above) = (0, 0, 0);
    for batch in input.batches {
        let batch = batch?;
        if has_lengths {
            add_lengths(&batch, &mut lengths).with_context(|| format!("{file}: columns num_tokens, truncated"))?;
        }
        let column = batch.column_by_name(&args.column).with_context(|| format!("{file}: column vanished"))?;
        let scores = cast(column, &DataType::Float64)?;
        let scores = scores.as_primitive::<Float64Type>();
        rows += scores.len();
        nulls += scores.null_count();
        for v in scores.iter().flatten() {
            distribution.add(v);
            if args.keep_above.is_some_and(|x| v > x) {
                above += 1;
            }
        }
    }
    let summary = distribution.summary(DETAILED_BINS);
    let scored = distribution.count();
    let keep_top = args.keep_top.zip(summary.as_ref()).map(|(percent, s)| KeepTop {
        percent,
        rows: ((percent / 100.0) * scored as f64).ceil() as usize,
        threshold: distribution.quantile(1.0 - percent / 100.0).unwrap_or(s.min),
    });
    let report = StatsReport {
        file: file.clone(),
        column: args.column.clone(),
        rows,
        null_scores: nulls,
        distribution: summary.clone(),
        keep_above: args.keep_above.map(|threshold| KeepAbove { threshold, rows: above }),
        keep_top,
        token_lengths: lengths.summary(None),
    };

    eprintln!("{file}: {rows} rows, {nulls} without a score");
    match &summary {
        Some(s) => eprint!("{}", render(&args.column, &distribution.summary(TERMINAL_BINS).unwrap_or(s.clone()))),
        None => eprintln!("no scores to summarise"),
    }
    if let Some(k) = &report.keep_above {
        eprintln!(
            "--keep-above {}: keeps {} of {scored} scored rows ({:.1}%)",
            k.threshold,
            k.rows,
            pct(k.rows, scored)
        );
    }
    if let Some(k) = &report.keep_top {
        eprintln!("--keep-top {}%: keeps {} rows, those scoring ≥ {:.4}", k.percent, k.rows, k.threshold);
    }
    if let Some(l) = &report.token_lengths {
        eprintln!("{}", l.line(max_length.unwrap_or(l.max as usize)));
    }
    if let (Some(path), Some(s)) = (&args.plot_lengths, lengths.distribution(DETAILED_BINS)) {
        write_histogram(
            path,
            &s,
            &format!("{} · {} rows", model.as_deref().unwrap_or(&file), s.count),
            Measure::Tokens,
        )?;
        eprintln!("plot: {}", path.display());
    }
    if let (Some(path), Some(s)) = (&args.plot, &summary) {
        let title = format!("{} · {} scores", model.as_deref().unwrap_or(&file), s.count);
        write_histogram(path, s, &title, Measure::Scores)?;
        eprintln!("plot: {}", path.display());
    }
    if let Some(path) = &args.stats_json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Adds the rows of a scored batch to `lengths` (rows without a token count, skipped rows, are
/// left out).
fn add_lengths(batch: &RecordBatch, lengths: &mut TokenLengths) -> Result<()> {
    let tokens = cast(batch.column_by_name("num_tokens").context("no num_tokens")?, &DataType::UInt32)?;
    let truncated = cast(batch.column_by_name("truncated").context("no truncated")?, &DataType::Boolean)?;
    let (tokens, truncated) = (tokens.as_primitive::<UInt32Type>(), truncated.as_boolean());
    for (tokens, truncated) in tokens.iter().zip(truncated.iter()) {
        if let (Some(tokens), Some(truncated)) = (tokens, truncated) {
            let full_tokens = (!truncated).then_some(tokens);
            lengths.add(&RowScore { score: 0.0, tokens, truncated, full_tokens });
        }
    }
    Ok(())
}

fn pct(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}
