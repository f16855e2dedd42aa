//! Who is using a store: every skyscore process that scores with a store holds a shared lock on
//! `NAME.lock` beside it for as long as the store is open; upkeep that rewrites or empties the
//! store (`clear`, `compact`, `check`, `repair`) needs the exclusive lock, and is refused while
//! any job holds the shared one. redb's own locks cannot say this: in multi-writer mode every
//! process may open the file, so "opened" does not mean "nobody else is using it".

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A lock on a store's users file, released when dropped.
#[derive(Debug)]
pub struct UsersLock {
    _file: File,
}

/// Upkeep was refused: a job (or another upkeep command) holds the store.
#[derive(Debug, thiserror::Error)]
#[error("the score store {shown} is in use by another skyscore process; stop it first (nothing was changed)")]
pub struct StoreInUse {
    shown: String,
}

impl StoreInUse {
    pub fn new(path: &Path) -> Self {
        Self { shown: path.display().to_string() }
    }
}

/// `scores.redb` → `scores.redb.lock`.
pub fn users_path(store: &Path) -> PathBuf {
    let name = store.file_name().map_or("scores.redb".into(), |n| n.to_string_lossy().into_owned());
    store.with_file_name(format!("{name}.lock"))
}

fn open_users(store: &Path) -> Result<File> {
    let path = users_path(store);
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("score store: cannot open its lock file {}", path.display()))
}

impl UsersLock {
    /// A job's lock: shared with other jobs. Waits up to `wait` while upkeep holds the store;
    /// `Ok(None)` after that (the caller runs without the store and says so).
    pub fn for_job(store: &Path, wait: Duration) -> Result<Option<Self>> {
        let file = open_users(store)?;
        let started = Instant::now();
        loop {
            match file.try_lock_shared() {
                Ok(()) => return Ok(Some(Self { _file: file })),
                Err(TryLockError::WouldBlock) if started.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("score store: cannot lock {}", users_path(store).display()))
                }
            }
        }
    }

    /// Upkeep's lock: exclusive, taken at once or refused with [`StoreInUse`].
    pub fn for_upkeep(store: &Path) -> Result<Self> {
        let file = open_users(store)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StoreInUse::new(store).into()),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("score store: cannot lock {}", users_path(store).display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_share_the_store_and_upkeep_waits_for_none_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("scores.redb");
        let a = UsersLock::for_job(&store, Duration::ZERO).unwrap().expect("free");
        let b = UsersLock::for_job(&store, Duration::ZERO).unwrap().expect("jobs share");
        let refused = UsersLock::for_upkeep(&store).unwrap_err();
        assert!(refused.downcast_ref::<StoreInUse>().is_some(), "{refused}");
        assert!(refused.to_string().contains("in use by another skyscore process"), "{refused}");
        drop((a, b));
        let upkeep = UsersLock::for_upkeep(&store).unwrap();
        assert!(
            UsersLock::for_job(&store, Duration::from_millis(150)).unwrap().is_none(),
            "a job waits, then goes on without"
        );
        drop(upkeep);
        assert!(UsersLock::for_job(&store, Duration::ZERO).unwrap().is_some());
    }
}
