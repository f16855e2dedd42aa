//! Ctrl-C and SIGTERM: the first one asks the run to stop between device batches (the store
//! keeps what was scored, temporary files are removed, the exit code says which signal); a
//! second Ctrl-C ends the process at once.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

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
        // A second signal of the same kind exits at once with the conventional code.
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, seen.clone());
        let _ = signal_hook::flag::register(signal, seen);
        let _ = signal_hook::flag::register(signal, stop_flag());
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { signal_hook::low_level::register(signal, move || SIGNAL.store(signal, Ordering::SeqCst)) };
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
