//! Ctrl-C and SIGTERM: the first one asks the run to stop between device batches (the store
//! keeps what was scored, temporary files are removed, the exit code says which signal); a
//! second Ctrl-C ends the process at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The flag the engine reads between device batches (`EngineOptions::stop`).
pub fn stop_flag() -> Arc<AtomicBool> {
    static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    STOP.get_or_init(|| Arc::new(AtomicBool::new(false))).clone()
}

/// Installs the handlers (once per process; later calls do nothing).
pub fn install() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    for signal in [SIGINT, SIGTERM] {
        let seen = Arc::new(AtomicBool::new(false));
        // Handlers run in the order they were registered. The signal is recorded first: a run
        // that sees the stop flag and ends must find the signal already there, or it would
        // exit as a plain failure (1) instead of 130/143.
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { signal_hook::low_level::register(signal, move || SIGNAL.store(signal, Ordering::SeqCst)) };
        // A second signal of the same kind exits at once with the conventional code.
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, seen.clone());
        let _ = signal_hook::flag::register(signal, seen);
        let _ = signal_hook::flag::register(signal, stop_flag());
    }
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The exit code for a run stopped by `signal`: 130 for SIGINT, 143 for SIGTERM.
pub fn exit_code(signal: i32) -> u8 {
    (128 + signal) as u8
}

/// What a signal is called in messages.
pub fn signal_name(signal: i32) -> &'static str {
    if signal == SIGINT {
        "Ctrl-C"
    } else {
        "SIGTERM"
    }
}

/// What a run kept in its score store, recorded by the job when it stops so that the stop
/// message says where the scores are.
#[derive(Debug, Clone)]
pub struct Kept {
    pub store: Option<PathBuf>,
    /// Scores of this run committed to the store.
    pub committed: usize,
    /// Scores computed but not saved (the store failed and was set aside).
    pub unsaved: usize,
    /// Why the store was set aside, if it was.
    pub store_failure: Option<String>,
}

static KEPT: Mutex<Option<Kept>> = Mutex::new(None);

/// Records what the run kept (the last record wins).
pub fn record_kept(kept: Kept) {
    *KEPT.lock().unwrap_or_else(|p| p.into_inner()) = Some(kept);
}

/// The message for a run stopped by `signal`: where its scores are and what a rerun does.
/// `store` is the store the command was given, for runs stopped before they recorded anything.
pub fn stop_message(signal: i32, store: Option<&Path>) -> String {
    let name = signal_name(signal);
    let kept = KEPT.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match (kept, store) {
        (Some(Kept { store: Some(path), committed, unsaved, store_failure: Some(reason) }), _) => format!(
            "stopped by {name}. The score store {} failed during the run ({reason}): {committed} scores of this run \
             are in it, {unsaved} were not saved; a rerun computes those again.",
            path.display()
        ),
        (Some(Kept { store: Some(path), committed, .. }), _) => format!(
            "stopped by {name}. Every score computed so far ({committed} in this run) is in the score store {}: \
             run the same command again to resume.",
            path.display()
        ),
        (Some(Kept { store: None, .. }), _) | (None, None) => {
            format!("stopped by {name}. No score store was used (--no-store): a rerun scores every row again.")
        }
        (None, Some(path)) => {
            format!("stopped by {name} before any score was computed; the score store {} is as it was.", path.display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test of the process-wide record: each case records, then reads the message.
    #[test]
    fn the_stop_message_says_where_the_scores_are() {
        let store = PathBuf::from("/data/st.redb");
        assert_eq!(
            stop_message(SIGTERM, Some(&store)),
            "stopped by SIGTERM before any score was computed; the score store /data/st.redb is as it was."
        );
        let kept = |store_failure: Option<&str>| Kept {
            store: Some(store.clone()),
            committed: 96,
            unsaved: 32,
            store_failure: store_failure.map(str::to_string),
        };
        record_kept(kept(None));
        let message = stop_message(SIGINT, Some(&store));
        assert!(message.starts_with("stopped by Ctrl-C. Every score computed so far (96 in this run)"), "{message}");
        assert!(message.contains("/data/st.redb: run the same command again to resume"), "{message}");
        record_kept(kept(Some("No space left on device")));
        let message = stop_message(SIGINT, Some(&store));
        assert!(message.contains("failed during the run (No space left on device): 96 scores"), "{message}");
        assert!(message.contains("32 were not saved; a rerun computes those again"), "{message}");
        assert!(!message.contains("resume"), "{message}");
        record_kept(Kept { store: None, committed: 0, unsaved: 0, store_failure: None });
        assert!(stop_message(SIGINT, None).contains("No score store was used (--no-store)"));
        assert_eq!(exit_code(SIGINT), 130);
        assert_eq!(exit_code(SIGTERM), 143);
    }
}
