//! Ctrl-C while Rust works. Python handles SIGINT by setting a flag that only a thread holding
//! the GIL sees; a long scoring call that released the GIL would otherwise run to its end. So
//! the work runs on its own thread while the caller's thread wakes every 100 ms, without the
//! GIL between checks, to ask Python whether a signal arrived. On one, the engine's stop flag
//! ends the work after the device batch in flight (its scores are committed to the store), and
//! the caller gets Python's `KeyboardInterrupt`.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// Runs `work` without the GIL, stopping it through `stop` when Python has a pending signal.
/// A panic inside `work` becomes a `RuntimeError`, never an abort of the interpreter.
pub fn run<T: Send>(py: Python<'_>, stop: &AtomicBool, work: impl FnOnce() -> T + Send) -> PyResult<T> {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let result = std::panic::catch_unwind(AssertUnwindSafe(work));
            done.store(true, Ordering::Release);
            result
        });
        while !done.load(Ordering::Acquire) {
            py.detach(|| {
                let started = Instant::now();
                while !done.load(Ordering::Acquire) && started.elapsed() < SIGNAL_CHECK {
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            if done.load(Ordering::Acquire) {
                break;
            }
            if let Err(signal) = py.check_signals() {
                stop.store(true, Ordering::SeqCst);
                let _ = py.detach(|| worker.join());
                stop.store(false, Ordering::SeqCst);
                return Err(signal);
            }
        }
        match py.detach(|| worker.join()) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) | Err(panic) => Err(PyRuntimeError::new_err(format!(
                "skyscore hit an internal error (please report it): {}",
                panic_message(&panic)
            ))),
        }
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
