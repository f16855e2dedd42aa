//! `skyscore store`: what the persistent score store holds, checking and repairing it, and
//! emptying it.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use skyscore_engine::store::{ScoreStore, DEFAULT_WAIT};

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store file. [default: $SKYSCORE_STORE, else ~/.cache/skyscore/scores.redb]
    #[arg(long, global = true, value_name = "FILE")]
    pub store: Option<PathBuf>,
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Entries, file size, and entries per model.
    Info,
    /// Remove the scores of one model (`--model` as given to `score`/`sql`: a hub id or a
    /// directory), or every score. Refused while a job uses the store.
    Clear {
        #[arg(long)]
        model: Option<String>,
    },
    /// Check the store: redb's check of its pages, then every entry's checksum. Exits non-zero
    /// when anything is damaged. Slow on a large store; refused while a job uses the store.
    Check,
    /// Keep what is readable of a damaged store: copy every intact entry into a fresh store, keep
    /// the damaged file beside it (NAME.damaged-<time>), and put the fresh one in its place. A
    /// store without damage is left as it is.
    Repair,
}

pub fn run(args: StoreArgs) -> Result<()> {
    let Some(path) = args.store.clone().or_else(skyscore_engine::store::default_path) else {
        bail!("no store given and no cache folder known: use --store FILE");
    };
    if !path.exists() {
        let text = format!("{}: no score store yet (it is created by the first score or sql run)\n", path.display());
        return write_stdout(&mut std::io::stdout().lock(), &text);
    }
    if let StoreCommand::Repair = args.command {
        let report = skyscore_engine::store::repair(&path)?;
        let text = match (&report.damage, &report.damaged_copy) {
            (Some(damage), Some(copy)) => {
                let mut text = format!(
                    "{}: damaged ({damage}); kept {} scores, dropped {} damaged ones; the damaged file is {}\n",
                    path.display(),
                    report.kept,
                    report.dropped_damaged,
                    copy.display()
                );
                if let Some(reason) = &report.read_stopped {
                    text.push_str(&format!(
                        "reading stopped early on damage ({reason}): scores after that point are lost\n"
                    ));
                }
                text
            }
            _ => format!("{}: no damage found ({} scores); nothing was changed\n", path.display(), report.kept),
        };
        return write_stdout(&mut std::io::stdout().lock(), &text);
    }
    // Info reads beside running jobs; clearing and checking (which mends pages) need the store
    // to themselves.
    let mut store = match args.command {
        StoreCommand::Info => match ScoreStore::open(&path, DEFAULT_WAIT)? {
            Some(store) => store,
            None => bail!("{}: the score store is held by another program; try again when it is done", path.display()),
        },
        _ => ScoreStore::open_for_upkeep(&path)?,
    };
    let mut out = std::io::stdout().lock();
    match args.command {
        StoreCommand::Info => {
            let size = std::fs::metadata(&path)?.len();
            let mut text = format!("{}: {} scores, {:.1} MB\n", path.display(), store.len()?, size as f64 / 1e6);
            for m in store.models()? {
                text.push_str(&format!("  {:>10}  {}\n", m.entries, m.model.replace(';', " ")));
            }
            write_stdout(&mut out, &text)?;
        }
        StoreCommand::Clear { model } => {
            let removed = store.clear(model.as_deref())?;
            store.compact()?;
            let what = model.map_or("all models".to_string(), |m| format!("model {m}"));
            write_stdout(&mut out, &format!("removed {removed} scores of {what} from {}\n", path.display()))?;
        }
        StoreCommand::Check => {
            let report = store.check()?;
            let pages = if report.pages_ok { "pages intact" } else { "pages damaged (redb repaired them)" };
            write_stdout(
                &mut out,
                &format!(
                    "{}: {pages}; {} entries, {} damaged\n",
                    path.display(),
                    report.entries,
                    report.damaged_entries
                ),
            )?;
            if !report.pages_ok || report.damaged_entries > 0 {
                bail!("{}: damaged; `skyscore store repair --store {0}` keeps what is intact", path.display());
            }
        }
        StoreCommand::Repair => {} // done above, before the store is opened
    }
    Ok(())
}

/// Prints to stdout; a closed pipe (`skyscore store info | head -1`) ends the output quietly.
fn write_stdout(out: &mut impl std::io::Write, text: &str) -> Result<()> {
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
