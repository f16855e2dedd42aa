//! redb code run under a guard: a panic inside redb (its answer to some damaged files) becomes
//! a [`StoreDamaged`] error naming the file and what to do, never a crash.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use anyhow::Result;
use redb::{DatabaseError, StorageError};

thread_local! {
    /// Set while this thread runs redb code: a panic there is reported as a damaged store.
    static INSIDE_STORE: Cell<bool> = const { Cell::new(false) };
}

/// Panics inside redb (its answer to some damaged files) are errors of the store, reported
/// once by [`guarded`]: the default panic message would only add noise to the user's terminal.
fn install_quiet_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !INSIDE_STORE.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// A store that cannot be read as a store: the message says what the user can do about it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the score store {shown} is damaged ({reason}). Run `skyscore store repair --store {shown}` to keep what is \
     readable (the damaged file is kept beside it), or move the file aside; `--no-store` runs without a store"
)]
pub struct StoreDamaged {
    shown: String,
    /// What redb said.
    pub reason: String,
}

pub(super) fn damaged(path: &Path, what: impl std::fmt::Display) -> anyhow::Error {
    StoreDamaged { shown: path.display().to_string(), reason: what.to_string() }.into()
}

/// Runs redb code for the store at `path`; a panic inside becomes a [`damaged`] error.
pub(super) fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_quiet_panic_hook();
    let was_inside = INSIDE_STORE.with(|flag| flag.replace(true));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
    INSIDE_STORE.with(|flag| flag.set(was_inside));
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "redb stopped on an inconsistency".into());
            Err(damaged(path, format!("redb: {message}")))
        }
    }
}

/// What redb's refusal to open a file says about damage: the damage, or `None` when the refusal
/// is no damage (in use, no permission, a failing disk, a store that needs recovery). Structures
/// pointing past the end of the file, or bytes that do not decode, are damage.
pub(super) fn damage_in(error: &DatabaseError) -> Option<String> {
    match error {
        DatabaseError::Storage(StorageError::Corrupted(reason)) => Some(reason.to_string()),
        DatabaseError::Storage(StorageError::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData) =>
        {
            Some(e.to_string())
        }
        _ => None,
    }
}
