//! The persistent score store: every score the model computes is committed to one crash-safe
//! file (redb: ACID, copy-on-write B-trees), keyed by the model's identity and the
//! conversation's content hash. Any later run, of `score` or SQL, the same job or another, after
//! a crash or not, runs the model only on conversations it has never scored with that model.
//!
//! Writes are committed after every device batch, so a kill loses at most the batches in flight.
//! Several processes may share one store (redb's multi-writer mode: one write transaction at a
//! time); a store another program holds exclusively is waited for, then done without.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use redb::{
    ConcurrencyMode, Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use skyscore_core::facts::described_model;
use skyscore_core::{ConversationKey, RowScore};

/// `model id (16 bytes) ++ conversation key (16 bytes)`, big-endian: one model's entries are
/// one contiguous key range.
const SCORES: TableDefinition<[u8; 32], [u8; 9]> = TableDefinition::new("scores");
/// Model id → what it stands for (the fingerprint text: model, revision, template, dtype, ...).
const MODELS: TableDefinition<[u8; 16], &str> = TableDefinition::new("models");

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

fn key(model: &ModelId, conversation: ConversationKey) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(model);
    k[16..].copy_from_slice(&conversation.to_be_bytes());
    k
}

fn encode(r: &RowScore) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..4].copy_from_slice(&r.score.to_le_bytes());
    v[4..8].copy_from_slice(&r.tokens.to_le_bytes());
    v[8] = r.truncated as u8;
    v
}

/// The store keeps what the model read; a row that was not truncated read all of itself.
fn decode(v: [u8; 9]) -> RowScore {
    let tokens = u32::from_le_bytes(v[4..8].try_into().expect("4 bytes"));
    let truncated = v[8] != 0;
    RowScore {
        score: f32::from_le_bytes(v[..4].try_into().expect("4 bytes")),
        tokens,
        truncated,
        full_tokens: (!truncated).then_some(tokens),
    }
}

impl ScoreStore {
    /// Opens (or creates) the store at `path`. When another program holds it exclusively, waits
    /// up to `wait`; then `Ok(None)`: the caller runs without it (and says so).
    pub fn open(path: &Path, wait: Duration) -> Result<Option<Self>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("score store: cannot create {}", dir.display()))?;
        }
        let started = Instant::now();
        loop {
            let opened = Database::builder()
                .set_concurrency_mode(ConcurrencyMode::MultiWriter)
                // Lookups read a few pages per row; the default (1 GiB) is for databases that live in RAM.
                .set_cache_size(64 << 20)
                .create(path);
            match opened {
                Ok(db) => {
                    let store = Self { db, path: path.to_path_buf() };
                    store.create_tables()?;
                    return Ok(Some(store));
                }
                Err(DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(DatabaseError::DatabaseAlreadyOpen) => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("score store {}", path.display())),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn create_tables(&self) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(SCORES)?;
        txn.open_table(MODELS)?;
        txn.commit()?;
        Ok(())
    }

    /// Records what `model` stands for (shown by `skyscore store info`); idempotent.
    pub fn register_model(&self, model: &ModelId, description: &str) -> Result<()> {
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
    pub fn get_many(&self, model: &ModelId, keys: &[ConversationKey]) -> Result<Vec<Option<RowScore>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SCORES)?;
        keys.iter().map(|k| Ok(table.get(key(model, *k))?.map(|v| decode(v.value())))).collect()
    }

    /// Commits scores (one durable transaction).
    pub fn put_many(&self, model: &ModelId, scores: &[(ConversationKey, RowScore)]) -> Result<()> {
        if scores.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SCORES)?;
            for (k, r) in scores {
                table.insert(key(model, *k), encode(r))?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Entries per model, largest first.
    pub fn models(&self) -> Result<Vec<ModelEntries>> {
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
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(SCORES)?.len()?)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Removes the entries of the models whose description matches `filter` (see
    /// [`description_matches`]), or every entry; returns how many entries went.
    pub fn clear(&self, filter: Option<&str>) -> Result<u64> {
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
        while self.db.compact()? {}
        Ok(())
    }
}

/// Whether a model description (see `ModelFacts::store_description`) is the model `filter`
/// names: its id exactly, or with a revision (`ID@rev`).
pub fn description_matches(description: &str, filter: &str) -> bool {
    described_model(description).is_some_and(|id| id == filter || id.split('@').next() == Some(filter))
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn model_filters_match_ids_and_revisions() {
        assert!(description_matches("skyscore.model=Skywork/X@abc;skyscore.dtype=f32", "Skywork/X"));
        assert!(description_matches("skyscore.model=Skywork/X;skyscore.dtype=f32", "Skywork/X"));
        assert!(!description_matches("skyscore.model=Skywork/XL;skyscore.dtype=f32", "Skywork/X"));
    }
}
