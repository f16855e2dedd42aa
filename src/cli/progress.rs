//! The progress bar of long runs: rows done, tokens/s, ETA. Hidden when stderr is not a
//! terminal (indicatif's stderr target does that) or when the user asks. Shared by reference
//! between the reading side (skipped rows) and the device side (scored batches).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    tokens: AtomicUsize,
}

impl Progress {
    pub fn new(total_rows: Option<usize>, enabled: bool) -> Self {
        let bar = match total_rows {
            Some(n) => ProgressBar::new(n as u64),
            None => ProgressBar::no_length(),
        };
        bar.set_draw_target(if enabled { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {human_pos}/{human_len} rows · {msg} · ETA {eta}",
        )
        .expect("valid template");
        bar.set_style(style);
        Self { bar, started: Instant::now(), tokens: AtomicUsize::new(0) }
    }

    pub fn advance(&self, rows: usize, tokens: usize) {
        let total = self.tokens.fetch_add(tokens, Ordering::Relaxed) + tokens;
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!("{:.0} tok/s", total as f64 / secs));
        self.bar.inc(rows as u64);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
