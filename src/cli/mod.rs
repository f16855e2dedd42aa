//! The `skyscore` command line.

pub mod cluster;
pub(crate) mod distribution;
pub mod engine_args;
mod progress;
pub mod score;
pub mod sql;
pub mod stats;
pub mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Score supervised fine-tuning (SFT) data with Skywork-Reward-V2 reward models.
///
/// Each row (instruction, optional input, output) becomes the conversation
/// [user: instruction + "\n" + input, assistant: output], rendered with the checkpoint's own
/// chat template, and the model's raw score logit is its reward.
#[derive(Debug, Parser)]
#[command(name = "skyscore", version, about, long_about)]
pub struct Cli {
    /// More logging (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score an SFT table (JSONL, JSON array or Parquet) and write {"id", "score"} rows.
    Score(score::ScoreArgs),
    /// Run SQL over Parquet/CSV/JSON tables with skywork_score(instruction, [input,] output)
    /// and skywork_score_chat(messages); without a query, an interactive shell.
    Sql(sql::SqlArgs),
    /// The score distribution of a scored file (quantiles, histogram, --plot), and how many
    /// rows a threshold (--keep-above X) or a share (--keep-top P%) keeps.
    Stats(stats::StatsArgs),
    /// The persistent score store: `info` (entries per model, size), `clear [--model M]`.
    Store(store::StoreArgs),
    /// Processes of a Ballista cluster that scores: `scheduler`, `executor`. Queries run on it
    /// with `skyscore sql --cluster df://HOST:PORT`.
    Cluster(cluster::ClusterArgs),
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "skyscore=info,warn",
        _ => "skyscore=debug,info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour codes only on a terminal: redirected logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    // Jobs stop between batches on Ctrl-C / SIGTERM; cluster processes keep the signals'
    // usual meaning (Ballista's executor shuts itself down on them, the scheduler just ends).
    if !matches!(cli.command, Command::Cluster(_)) {
        crate::interrupt::install();
    }
    // Said when a signal stops the run: what a rerun will find.
    let store = match &cli.command {
        Command::Score(args) => args.engine.store_path(),
        Command::Sql(args) if args.cluster.is_none() => args.engine.store_path(),
        _ => None,
    };
    let result = match cli.command {
        Command::Score(args) => score::run(args),
        Command::Sql(args) => sql::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Store(args) => store::run(args),
        Command::Cluster(args) => cluster::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(signal) = crate::interrupt::requested() {
                eprintln!("{}", crate::interrupt::stop_message(signal, store.as_deref()));
                return ExitCode::from(crate::interrupt::exit_code(signal));
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
