//! The persistent score store: every score the model computes is committed to one crash-safe
//! file (redb: ACID, copy-on-write B-trees), keyed by the model's identity and the
//! conversation's content hash. Any later run, of `score` or SQL, the same job or another, after
//! a crash or not, runs the model only on conversations it has never scored with that model.
//!
//! Several processes may share one store (redb's multi-writer mode: one write transaction at a
//! time); each holds a shared lock on `NAME.lock` beside it ([`users`]), so upkeep that rewrites
//! the store (`clear`, `check`, `repair`) is refused while a job uses it. A store another
//! program holds exclusively is waited for, then done without.
//!
//! A store is a file on a disk that can go bad. Every value carries a checksum of its key and
//! itself ([`entry`]), so a flipped byte is never read back as a score (the entry counts as
//! absent and the row is scored again); a redb panic on a damaged file is contained
//! ([`guard`]) and becomes an error naming the file and what to do ([`ScoreStore::check`],
//! [`repair()`], `--no-store`).

mod entry;
mod guard;
mod repair;
pub mod users;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use redb::{
    ConcurrencyMode, Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableHandle,
};
use skyscore_core::facts::described_model;
use skyscore_core::{ConversationKey, RowScore};

use entry::{decode, encode, key, with_checksum, MODELS, SCORES, SCORES_V1};
pub use guard::StoreDamaged;
use guard::{damage_in, damaged, guarded};
pub use repair::{repair, RepairReport};
pub use users::StoreInUse;
use users::UsersLock;

/// Names the model a score belongs to: a hash of everything scores depend on.
pub type ModelId = [u8; 16];

/// How long to wait for a store that another program holds exclusively.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// The store file when none is given: `$SKYSCORE_STORE`, else the user cache folder
/// (`$XDG_CACHE_HOME/skyscore/scores.redb`, `~/.cache/skyscore/scores.redb` on Linux).
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SKYSCORE_STORE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    dirs::cache_dir().map(|d| d.join("skyscore").join("scores.redb"))
}

pub struct ScoreStore {
    db: Database,
    path: PathBuf,
    /// A damaged entry was met and reported (once per store).
    warned_damage: AtomicBool,
    /// This process's lock on the store's users file (shared for a job, exclusive for upkeep).
    _users: Option<UsersLock>,
}

impl std::fmt::Debug for ScoreStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoreStore").field("path", &self.path).finish()
    }
}

/// One model's share of the store.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntries {
    pub model: String,
    pub entries: u64,
}

/// What [`ScoreStore::check`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// redb's own check of its pages passed (`false`: it found damage it could repair).
    pub pages_ok: bool,
    pub entries: u64,
    /// Entries whose checksum does not match (never returned as scores).
    pub damaged_entries: u64,
}

impl ScoreStore {
    /// Opens (or creates) the store at `path` for a job, which shares it with other jobs (see
    /// [`users`]). While upkeep holds it, or another program holds it exclusively, waits up to
    /// `wait`; then `Ok(None)`: the caller runs without it (and says so).
    pub fn open(path: &Path, wait: Duration) -> Result<Option<Self>> {
        create_parent(path)?;
        let started = Instant::now();
        let Some(users) = UsersLock::for_job(path, wait)? else { return Ok(None) };
        let Some(db) = Self::open_db(path, wait.saturating_sub(started.elapsed()))? else { return Ok(None) };
        Ok(Some(Self { _users: Some(users), ..Self::without_users(db, path) }))
    }

    /// Opens the store at `path` for upkeep that rewrites or empties it: refused with
    /// [`StoreInUse`] while any other process uses it.
    pub fn open_for_upkeep(path: &Path) -> Result<Self> {
        create_parent(path)?;
        let users = UsersLock::for_upkeep(path)?;
        let Some(db) = Self::open_db(path, Duration::ZERO)? else { return Err(StoreInUse::new(path).into()) };
        Ok(Self { _users: Some(users), ..Self::without_users(db, path) })
    }

    fn without_users(db: Database, path: &Path) -> Self {
        Self { db, path: path.to_path_buf(), warned_damage: AtomicBool::new(false), _users: None }
    }

    /// Opens or creates the database at `path` with its tables (no users lock). When another
    /// program holds it exclusively, waits up to `wait`, then `Ok(None)`. Damage is a
    /// [`StoreDamaged`] error.
    fn open_db(path: &Path, wait: Duration) -> Result<Option<Database>> {
        let started = Instant::now();
        loop {
            let opened = guarded(path, || {
                Ok(Database::builder()
                    .set_concurrency_mode(ConcurrencyMode::MultiWriter)
                    // Lookups read a few pages per row; the default (1 GiB) is for databases that live in RAM.
                    .set_cache_size(64 << 20)
                    .create(path))
            })?;
            match opened {
                Ok(db) => {
                    guarded(path, || create_tables(&db, path))?;
                    return Ok(Some(db));
                }
                Err(DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(DatabaseError::DatabaseAlreadyOpen) => return Ok(None),
                Err(e) => match damage_in(&e) {
                    Some(damage) => return Err(damaged(path, damage)),
                    None => return Err(e).with_context(|| format!("score store {}", path.display())),
                },
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records what `model` stands for (shown by `skyscore store info`); idempotent.
    pub fn register_model(&self, model: &ModelId, description: &str) -> Result<()> {
        guarded(&self.path, || self.register_model_unguarded(model, description))
    }

    fn register_model_unguarded(&self, model: &ModelId, description: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut models = txn.open_table(MODELS)?;
            if models.get(model)?.is_none() {
                models.insert(model, description)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Looks up conversations; `None` where the model has not scored them yet.
    /// A damaged entry (its checksum does not match) is `None`: the row is scored again.
    pub fn get_many(&self, model: &ModelId, keys: &[ConversationKey]) -> Result<Vec<Option<RowScore>>> {
        guarded(&self.path, || {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(SCORES)?;
            keys.iter()
                .map(|k| {
                    let key = key(model, *k);
                    let Some(value) = table.get(key)? else { return Ok(None) };
                    let decoded = decode(&key, value.value());
                    if decoded.is_none() && !self.warned_damage.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "the score store {} has damaged entries: they are scored again; \
                             `skyscore store check` counts them, `skyscore store repair` drops them",
                            self.path.display()
                        );
                    }
                    Ok(decoded)
                })
                .collect()
        })
    }

    /// Commits scores (one durable transaction).
    pub fn put_many(&self, model: &ModelId, scores: &[(ConversationKey, RowScore)]) -> Result<()> {
        if scores.is_empty() {
            return Ok(());
        }
        guarded(&self.path, || {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(SCORES)?;
                for (k, r) in scores {
                    let key = key(model, *k);
                    table.insert(key, encode(&key, r))?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// redb's check of its pages (it repairs what it can), then every entry's checksum. Slow on
    /// a large store: for `skyscore store check`, not for every run.
    pub fn check(&mut self) -> Result<CheckReport> {
        let path = self.path.clone();
        let pages_ok = guarded(&path, || self.db.check_integrity().map_err(|e| damaged(&path, e)))?;
        guarded(&path, || {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(SCORES)?;
            let (mut entries, mut damaged_entries) = (0, 0);
            for entry in table.iter()? {
                let (k, v) = entry?;
                entries += 1;
                damaged_entries += decode(&k.value(), v.value()).is_none() as u64;
            }
            Ok(CheckReport { pages_ok, entries, damaged_entries })
        })
    }

    /// Entries per model, largest first.
    pub fn models(&self) -> Result<Vec<ModelEntries>> {
        guarded(&self.path, || self.models_unguarded())
    }

    fn models_unguarded(&self) -> Result<Vec<ModelEntries>> {
        let txn = self.db.begin_read()?;
        let models = txn.open_table(MODELS)?;
        let scores = txn.open_table(SCORES)?;
        let mut out = Vec::new();
        for row in models.iter()? {
            let (id, description) = row?;
            let id = id.value();
            let entries = scores.range(key(&id, 0)..=key(&id, u128::MAX))?.count() as u64;
            out.push(ModelEntries { model: description.value().to_string(), entries });
        }
        out.sort_by_key(|m| std::cmp::Reverse(m.entries));
        Ok(out)
    }

    pub fn len(&self) -> Result<u64> {
        guarded(&self.path, || {
            let txn = self.db.begin_read()?;
            Ok(txn.open_table(SCORES)?.len()?)
        })
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Removes the entries of the models whose description matches `filter` (see
    /// [`description_matches`]), or every entry; returns how many entries went.
    pub fn clear(&self, filter: Option<&str>) -> Result<u64> {
        guarded(&self.path, || self.clear_unguarded(filter))
    }

    fn clear_unguarded(&self, filter: Option<&str>) -> Result<u64> {
        let txn = self.db.begin_write()?;
        let mut removed = 0;
        {
            let mut models = txn.open_table(MODELS)?;
            let mut scores = txn.open_table(SCORES)?;
            let ids: Vec<(ModelId, String)> =
                models.iter()?.map(|r| r.map(|(k, v)| (k.value(), v.value().to_string()))).collect::<Result<_, _>>()?;
            for (id, description) in ids {
                if filter.is_some_and(|f| !description_matches(&description, f)) {
                    continue;
                }
                let before = scores.len()?;
                scores.retain_in(key(&id, 0)..=key(&id, u128::MAX), |_, _| false)?;
                removed += before - scores.len()?;
                models.remove(id)?;
            }
        }
        txn.commit()?;
        Ok(removed)
    }

    /// Gives freed pages back to the file system (after a `clear`).
    pub fn compact(&mut self) -> Result<()> {
        let path = self.path.clone();
        guarded(&path, || {
            while self.db.compact()? {}
            Ok(())
        })
    }
}

/// Creates the tables, and moves the scores of a store written before values had checksums
/// into the checksummed table (once, in one transaction).
fn create_tables(db: &Database, path: &Path) -> Result<()> {
    let txn = db.begin_write()?;
    let has_v1 = txn.list_tables()?.any(|t| t.name() == SCORES_V1.name());
    {
        let mut scores = txn.open_table(SCORES)?;
        txn.open_table(MODELS)?;
        if has_v1 {
            let old = txn.open_table(SCORES_V1)?;
            let mut moved = 0u64;
            for entry in old.iter()? {
                let (k, v) = entry?;
                let k = k.value();
                scores.insert(k, with_checksum(&k, v.value()))?;
                moved += 1;
            }
            tracing::info!("score store {}: {moved} scores moved to the checksummed table", path.display());
        }
    }
    if has_v1 {
        txn.delete_table(SCORES_V1)?;
    }
    txn.commit()?;
    Ok(())
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("score store: cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// Whether a model description (see `ModelFacts::store_description`) is the model `filter`
/// names: its id exactly, or with a revision (`ID@rev`).
pub fn description_matches(description: &str, filter: &str) -> bool {
    described_model(description).is_some_and(|id| id == filter || id.split('@').next() == Some(filter))
}

#[cfg(test)]
mod tests {
    use super::entry::encode_v1;
    use super::*;

    fn row(score: f32) -> RowScore {
        let truncated = score < 0.0;
        RowScore { score, tokens: 7, truncated, full_tokens: (!truncated).then_some(7) }
    }

    #[test]
    fn scores_round_trip_per_model_and_clear_by_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/scores.redb");
        let store = ScoreStore::open(&path, DEFAULT_WAIT).unwrap().unwrap();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        store.register_model(&a, "skyscore.model=org/a;skyscore.dtype=f32").unwrap();
        store.register_model(&b, "skyscore.model=/models/b;skyscore.dtype=bf16").unwrap();
        store.put_many(&a, &[(10, row(1.5)), (u128::MAX, row(-2.0))]).unwrap();
        store.put_many(&b, &[(10, row(9.0))]).unwrap();
        assert_eq!(store.get_many(&a, &[10, 11, u128::MAX]).unwrap(), [Some(row(1.5)), None, Some(row(-2.0))]);
        assert_eq!(store.get_many(&b, &[10]).unwrap(), [Some(row(9.0))], "models do not share scores");
        let models = store.models().unwrap();
        assert_eq!(models.iter().map(|m| m.entries).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(store.clear(Some("org/a")).unwrap(), 2);
        assert_eq!(store.len().unwrap(), 1);
        assert_eq!(store.get_many(&b, &[10]).unwrap(), [Some(row(9.0))]);
        drop(store);
        // Reopening finds what was committed.
        let store = ScoreStore::open(&path, DEFAULT_WAIT).unwrap().unwrap();
        assert_eq!(
            store.models().unwrap(),
            [ModelEntries { model: "skyscore.model=/models/b;skyscore.dtype=bf16".into(), entries: 1 }]
        );
        assert_eq!(store.clear(None).unwrap(), 1);
        assert!(store.is_empty().unwrap());
    }

    /// A store of `n` scores of one model; returns the path and the scores.
    fn store_with(dir: &Path, n: u128) -> (PathBuf, Vec<(ConversationKey, RowScore)>) {
        let path = dir.join("scores.redb");
        let store = ScoreStore::open(&path, DEFAULT_WAIT).unwrap().unwrap();
        store.register_model(&[7u8; 16], "skyscore.model=org/a;skyscore.dtype=f32").unwrap();
        let rows: Vec<_> = (0..n).map(|k| (k * 7919 + 1, row(k as f32 * 0.25 + 0.5))).collect();
        store.put_many(&[7u8; 16], &rows).unwrap();
        (path, rows)
    }

    #[test]
    fn a_value_with_a_flipped_bit_is_not_a_score() {
        let k = key(&[7u8; 16], 42);
        let good = encode(&k, &row(1.25));
        assert_eq!(decode(&k, good), Some(row(1.25)));
        for bit in 0..13 * 8 {
            let mut bad = good;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode(&k, bad), None, "bit {bit}");
        }
        assert_eq!(decode(&key(&[7u8; 16], 43), good), None, "a value moved to another key");
    }

    #[test]
    fn a_damaged_value_is_an_error_naming_the_file_or_is_scored_again_and_repair_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (path, rows) = store_with(dir.path(), 50);
        // Flip a bit of every stored copy of one value (copy-on-write may leave old pages).
        let target_key = key(&[7u8; 16], rows[10].0);
        let value = encode(&target_key, &rows[10].1);
        let mut bytes = std::fs::read(&path).unwrap();
        let places: Vec<usize> = bytes.windows(13).enumerate().filter(|(_, w)| *w == value).map(|(i, _)| i).collect();
        assert!(!places.is_empty(), "the value is stored as is");
        for at in places {
            bytes[at] ^= 0x40;
        }
        std::fs::write(&path, &bytes).unwrap();
        // Either redb's page checksums refuse the file, naming it and the way out, or the
        // value's own checksum keeps the damaged score from being read.
        match ScoreStore::open(&path, DEFAULT_WAIT) {
            Err(e) => {
                let err = e.to_string();
                assert!(err.contains(&format!("the score store {} is damaged", path.display())), "{err}");
                assert!(err.contains("skyscore store repair") && err.contains("--no-store"), "{err}");
            }
            Ok(store) => {
                let mut store = store.unwrap();
                if let Ok(got) = store.get_many(&[7u8; 16], &[rows[10].0]) {
                    assert_eq!(got, [None], "the damaged score is never read back");
                }
                match store.check() {
                    Ok(report) => assert!(!report.pages_ok || report.damaged_entries == 1, "{report:?}"),
                    Err(e) => assert!(e.to_string().contains("is damaged"), "{e}"),
                }
            }
        }
        // The check above may have mended pages: repair the file as it was damaged.
        std::fs::write(&path, &bytes).unwrap();
        let repaired = repair(&path).unwrap();
        assert!(repaired.damage.is_some(), "{repaired:?}");
        let kept = repaired.damaged_copy.as_ref().expect("the damaged file is kept beside it");
        assert!(std::fs::read(kept).unwrap() == bytes, "the damaged file is kept as it was");
        match &repaired.read_stopped {
            Some(_) => assert_eq!(repaired.kept, 0),
            None => assert_eq!((repaired.kept, repaired.dropped_damaged), (49, 1)),
        }
        let mut store = ScoreStore::open(&path, DEFAULT_WAIT).unwrap().unwrap();
        let report = store.check().unwrap();
        assert_eq!((report.pages_ok, report.entries, report.damaged_entries), (true, repaired.kept, 0));
    }

    #[test]
    fn repair_leaves_an_intact_store_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (path, rows) = store_with(dir.path(), 50);
        let before = std::fs::read(&path).unwrap();
        let repaired = repair(&path).unwrap();
        assert_eq!((repaired.kept, repaired.damage, repaired.damaged_copy), (50, None, None));
        assert!(std::fs::read(&path).unwrap() == before, "an intact store is not rewritten");
        let store = ScoreStore::open(&path, DEFAULT_WAIT).unwrap().unwrap();
        let keys: Vec<_> = rows.iter().map(|(k, _)| *k).collect();
        let got = store.get_many(&[7u8; 16], &keys).unwrap();
        assert_eq!(got, rows.iter().map(|(_, r)| Some(*r)).collect::<Vec<_>>());
        assert_eq!(store.models().unwrap()[0].entries, 50);
    }

    /// The case of the issue: `repair` and `clear` on a store a job is writing used to rename
    /// it away or empty it under the job.
    #[test]
    fn upkeep_is_refused_while_a_job_uses_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (path, rows) = store_with(dir.path(), 20);
        let job = ScoreStore::open(&path, DEFAULT_WAIT).unwrap().unwrap();
        let listing = || {
            let mut names: Vec<String> =
                std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            names
        };
        let before = listing();
        for refused in [repair(&path).unwrap_err(), ScoreStore::open_for_upkeep(&path).unwrap_err()] {
            assert!(refused.downcast_ref::<StoreInUse>().is_some(), "{refused:#}");
        }
        assert_eq!(listing(), before, "nothing renamed or created");
        job.put_many(&[7u8; 16], &[(999_999_999, row(4.0))]).unwrap();
        assert_eq!(job.len().unwrap(), rows.len() as u64 + 1, "the job's store is still its store");
        drop(job);
        let upkeep = ScoreStore::open_for_upkeep(&path).unwrap();
        assert!(ScoreStore::open(&path, Duration::from_millis(100)).unwrap().is_none(), "jobs wait for upkeep");
        assert_eq!(upkeep.clear(None).unwrap(), rows.len() as u64 + 1);
    }

    #[test]
    fn stores_written_before_checksums_are_moved_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(SCORES_V1).unwrap();
                table.insert(key(&[1u8; 16], 5), encode_v1(&row(2.5))).unwrap();
                txn.open_table(MODELS).unwrap().insert([1u8; 16], "skyscore.model=org/old").unwrap();
            }
            txn.commit().unwrap();
        }
        let store = ScoreStore::open(&path, DEFAULT_WAIT).unwrap().unwrap();
        assert_eq!(store.get_many(&[1u8; 16], &[5]).unwrap(), [Some(row(2.5))]);
        assert_eq!(store.len().unwrap(), 1);
    }

    /// Bytes flipped anywhere in the file: opening, reading and checking give errors or the
    /// right scores, never a panic and never a wrong score.
    #[test]
    fn damage_anywhere_gives_an_error_or_the_right_scores() {
        let dir = tempfile::tempdir().unwrap();
        let (path, rows) = store_with(dir.path(), 400);
        let clean = std::fs::read(&path).unwrap();
        let keys: Vec<_> = rows.iter().map(|(k, _)| *k).collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..60 {
            let mut bytes = clean.clone();
            for _ in 0..1 + case % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] ^= 1 << (next() % 8);
            }
            std::fs::write(&path, &bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| {
                let Ok(Some(mut store)) = ScoreStore::open(&path, Duration::ZERO) else { return };
                if let Ok(got) = store.get_many(&[7u8; 16], &keys) {
                    for (g, (_, r)) in got.iter().zip(&rows) {
                        assert!(g.is_none() || g.as_ref() == Some(r), "case {case}: a wrong score was read");
                    }
                }
                let _ = store.len();
                let _ = store.check();
            });
            assert!(outcome.is_ok(), "case {case}: a panic escaped the store");
        }
    }

    #[test]
    fn model_filters_match_ids_and_revisions() {
        assert!(description_matches("skyscore.model=Skywork/X@abc;skyscore.dtype=f32", "Skywork/X"));
        assert!(description_matches("skyscore.model=Skywork/X;skyscore.dtype=f32", "Skywork/X"));
        assert!(!description_matches("skyscore.model=Skywork/XL;skyscore.dtype=f32", "Skywork/X"));
    }
}
