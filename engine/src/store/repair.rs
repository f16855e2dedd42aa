//! `skyscore store repair`: keeps what is readable of a damaged store. Refused while another
//! process uses the store; a store without damage is left exactly as it is. A damaged store's
//! intact entries go into a fresh file, the damaged file is kept beside it under a name no
//! other file has, and the fresh file replaces it in one rename: whenever the repair stops, the
//! store's path holds the old store or the new one, never none.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use redb::{ConcurrencyMode, Database, DatabaseError, ReadableDatabase, ReadableTable};

use super::entry::{decode, MODELS, SCORES};
use super::guard::{damage_in, guarded, StoreDamaged};
use super::users::{StoreInUse, UsersLock};
use super::ScoreStore;

/// What [`repair`] found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct RepairReport {
    /// Entries in the store after the repair.
    pub kept: u64,
    /// Entries dropped: their checksum did not match, or they were past the point where reading
    /// the damaged file stopped.
    pub dropped_damaged: u64,
    /// Reading stopped early on damage (entries after that point are lost).
    pub read_stopped: Option<String>,
    /// The damage found; `None`: the store is intact and was not changed.
    pub damage: Option<String>,
    /// Where the damaged file was kept (`None` when nothing was repaired).
    pub damaged_copy: Option<PathBuf>,
}

/// Repairs the store at `path` if it is damaged (see the module's description).
pub fn repair(path: &Path) -> Result<RepairReport> {
    let _users = UsersLock::for_upkeep(path)?;
    let damage = match find_damage(path)? {
        Ok(entries) => {
            return Ok(RepairReport {
                kept: entries,
                dropped_damaged: 0,
                read_stopped: None,
                damage: None,
                damaged_copy: None,
            })
        }
        Err(damage) => damage,
    };
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let name = path.file_name().map_or("scores.redb".into(), |n| n.to_string_lossy().into_owned());
    let fresh_path = path.with_file_name(format!(".{name}.repair-{stamp}-{}.tmp", std::process::id()));
    // A store redb must recover first is opened for writing below: keep a copy of its bytes
    // then, not a second name for the file being written.
    let recovering = needs_recovery(path);
    let damaged_copy = keep_beside(path, &format!("{name}.damaged-{stamp}"), recovering)?;
    let (kept, dropped_damaged, read_stopped) = match copy_intact(path, &fresh_path, recovering) {
        Ok(figures) => figures,
        Err(e) => {
            let _ = std::fs::remove_file(&fresh_path);
            let _ = std::fs::remove_file(&damaged_copy);
            return Err(e);
        }
    };
    // One rename: the path holds the damaged store until it holds the repaired one.
    std::fs::rename(&fresh_path, path)
        .with_context(|| format!("moving {} to {}", fresh_path.display(), path.display()))?;
    Ok(RepairReport { kept, dropped_damaged, read_stopped, damage: Some(damage), damaged_copy: Some(damaged_copy) })
}

/// `Ok(Ok(entries))` when the store is intact, `Ok(Err(what))` when it is damaged, `Err` when it
/// cannot be looked at (in use by another program, no permission, ...): not damage. Read-only:
/// an intact store is not written to (and a damaged one is kept as it was). A store that needs
/// redb's recovery after a crash (which is no damage) is opened for writing, which recovers it.
fn find_damage(path: &Path) -> Result<Result<u64, String>> {
    let opened = guarded(path, || {
        Ok(Database::builder().set_concurrency_mode(ConcurrencyMode::MultiWriter).open_read_only(path))
    });
    let db = match opened {
        Err(e) => return damage_or_error(e),
        Ok(Ok(db)) => db,
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => return Err(StoreInUse::new(path).into()),
        Ok(Err(DatabaseError::RepairAborted)) => return find_damage_recovering(path),
        Ok(Err(e)) => match damage_in(&e) {
            Some(damage) => return Ok(Err(damage)),
            None => return Err(e).with_context(|| format!("score store {}", path.display())),
        },
    };
    let scanned = guarded(path, || {
        let txn = db.begin_read()?;
        let (mut entries, mut damaged) = (0u64, 0u64);
        for entry in txn.open_table(SCORES)?.iter()? {
            let (k, v) = entry?;
            entries += 1;
            damaged += decode(&k.value(), v.value()).is_none() as u64;
        }
        for entry in txn.open_table(MODELS)?.iter()? {
            entry?;
        }
        Ok((entries, damaged))
    });
    match scanned {
        Ok((entries, 0)) => Ok(Ok(entries)),
        Ok((_, damaged)) => Ok(Err(format!("{damaged} entries fail their checksums"))),
        Err(e) => match e.downcast::<StoreDamaged>() {
            Ok(d) => Ok(Err(d.reason)),
            // A read that fails inside redb (a page that does not decode): damage.
            Err(other) => Ok(Err(format!("{other:#}"))),
        },
    }
}

/// [`find_damage`] for a store redb must recover first: opened for writing, then checked.
fn find_damage_recovering(path: &Path) -> Result<Result<u64, String>> {
    let mut store = match ScoreStore::open_db(path, Duration::ZERO) {
        Ok(Some(db)) => ScoreStore::without_users(db, path),
        Ok(None) => return Err(StoreInUse::new(path).into()),
        Err(e) => return damage_or_error(e),
    };
    match store.check() {
        Ok(report) if !report.pages_ok => Ok(Err("redb found damaged pages".into())),
        Ok(report) if report.damaged_entries > 0 => {
            Ok(Err(format!("{} entries fail their checksums", report.damaged_entries)))
        }
        Ok(report) => Ok(Ok(report.entries)),
        Err(e) => damage_or_error(e),
    }
}

/// A [`StoreDamaged`] error as the damage it names; any other error stays an error.
fn damage_or_error(e: anyhow::Error) -> Result<Result<u64, String>> {
    match e.downcast::<StoreDamaged>() {
        Ok(d) => Ok(Err(d.reason)),
        Err(other) => Err(other),
    }
}

/// Copies every readable, intact entry of `path` into a new store at `fresh`. Returns the
/// entries kept, those dropped, and why reading stopped early, if it did.
fn copy_intact(path: &Path, fresh: &Path, recovering: bool) -> Result<(u64, u64, Option<String>)> {
    let (mut dropped_damaged, mut models) = (0u64, Vec::new());
    let mut batch: Vec<([u8; 32], [u8; 13])> = Vec::new();
    // redb refuses a file whose pages fail their checksums: then nothing is readable, and the
    // repair is a fresh store with the damaged file kept beside it.
    let (mut old, mut old_recovered) = (None, None);
    let read_stopped = guarded(path, || {
        let cannot_open = |e: DatabaseError| anyhow!("redb cannot open it: {e}");
        let txn = if recovering {
            old_recovered.insert(Database::builder().open(path).map_err(cannot_open)?).begin_read()?
        } else {
            let mut builder = Database::builder();
            builder.set_concurrency_mode(ConcurrencyMode::MultiWriter);
            old.insert(builder.open_read_only(path).map_err(cannot_open)?).begin_read()?
        };
        if let Ok(table) = txn.open_table(MODELS) {
            for entry in table.iter()? {
                let (k, v) = entry?;
                models.push((k.value(), v.value().to_string()));
            }
        }
        let table = txn.open_table(SCORES)?;
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (k, v) = (k.value(), v.value());
            if decode(&k, v).is_some() {
                batch.push((k, v));
            } else {
                dropped_damaged += 1;
            }
        }
        Ok(())
    })
    .err()
    .map(|e| match e.downcast_ref::<StoreDamaged>() {
        Some(d) => d.reason.clone(),
        None => format!("{e:#}"),
    });
    drop((old, old_recovered));
    let fresh_db = ScoreStore::open_db(fresh, Duration::ZERO)?
        .ok_or_else(|| anyhow!("{} is held by another program", fresh.display()))?;
    let txn = fresh_db.begin_write()?;
    {
        let mut table = txn.open_table(SCORES)?;
        for (k, v) in &batch {
            table.insert(*k, *v)?;
        }
        let mut table = txn.open_table(MODELS)?;
        for (k, v) in &models {
            table.insert(k, v.as_str())?;
        }
    }
    txn.commit()?;
    Ok((batch.len() as u64, dropped_damaged, read_stopped))
}

/// Whether redb must recover the store at `path` (after a crash) before reading it.
fn needs_recovery(path: &Path) -> bool {
    let mut builder = Database::builder();
    builder.set_concurrency_mode(ConcurrencyMode::MultiWriter);
    matches!(guarded(path, || Ok(builder.open_read_only(path))), Ok(Err(DatabaseError::RepairAborted)))
}

/// Keeps the file at `path` beside it as `NAME`, or `NAME-1`, `NAME-2`, ... when taken: a hard
/// link (which fails on a taken name), or a copy of its bytes with `copy` or where the file
/// system has no links. `path` stays.
fn keep_beside(path: &Path, name: &str, copy: bool) -> Result<PathBuf> {
    for n in 0..1000 {
        let kept = path.with_file_name(if n == 0 { name.to_string() } else { format!("{name}-{n}") });
        if !copy {
            match std::fs::hard_link(path, &kept) {
                Ok(()) => return Ok(kept),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(_) => {} // no links here: copy
            }
        }
        let mut to = match std::fs::File::options().write(true).create_new(true).open(&kept) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", kept.display())),
        };
        let mut from = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        std::io::copy(&mut from, &mut to).with_context(|| format!("copying to {}", kept.display()))?;
        to.sync_all()?;
        return Ok(kept);
    }
    anyhow::bail!("no free name beside {} to keep the damaged file", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_aside_names_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.redb");
        std::fs::write(&path, "first").unwrap();
        let a = keep_beside(&path, "scores.redb.damaged-7", false).unwrap();
        let b = keep_beside(&path, "scores.redb.damaged-7", true).unwrap();
        assert_eq!(a, dir.path().join("scores.redb.damaged-7"));
        assert_eq!(b, dir.path().join("scores.redb.damaged-7-1"));
        assert!(path.exists(), "the store's path keeps its file");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "first", "a copy of the bytes");
    }
}
