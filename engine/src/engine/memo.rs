//! The memo: what a chunk of rows needs from the model once duplicates and the score store have
//! answered what they can. A chunk's rows are deduplicated by conversation, looked up in the
//! store, and only conversations never scored with this model go on to be tokenized; each device
//! batch's scores go to the store writer ([`super::store_writer`]), which commits them beside the
//! scoring. No candle here: it is tested over a fake store.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use skyscore_core::{conversation_key, Conversation, ConversationKey, Distinct, RowResult, RowScore, ScoreStats};

use super::store_writer::{CommitPolicy, StoreWriter};
use crate::store::{ModelId, ScoreStore};

/// Where scores of earlier runs are kept for one model: the score store, or a fake in tests.
pub trait ScoreMemory: Send + Sync {
    /// The scores known for `keys`, `None` where there is none.
    fn get_many(&self, keys: &[ConversationKey]) -> Result<Vec<Option<RowScore>>>;
    /// Keeps `rows` (one durable commit).
    fn put_many(&self, rows: &[(ConversationKey, RowScore)]) -> Result<()>;
    /// The file, for messages.
    fn path(&self) -> &Path;
}

/// The score store with this model's id in it.
pub struct StoredModel {
    pub store: ScoreStore,
    pub model: ModelId,
}

impl ScoreMemory for StoredModel {
    fn get_many(&self, keys: &[ConversationKey]) -> Result<Vec<Option<RowScore>>> {
        self.store.get_many(&self.model, keys)
    }

    fn put_many(&self, rows: &[(ConversationKey, RowScore)]) -> Result<()> {
        self.store.put_many(&self.model, rows)
    }

    fn path(&self) -> &Path {
        self.store.path()
    }
}

/// Where a row of a chunk gets its result.
#[derive(Debug, Clone, PartialEq)]
pub enum Slot {
    /// The caller refused it (a NULL column, say).
    Failed(String),
    /// Found in the score store.
    Stored(RowScore),
    /// The k-th conversation still to score (duplicates share it).
    Todo(usize),
}

/// A chunk after deduplication and the store lookup.
#[derive(Debug)]
pub struct ChunkPlan {
    /// One per row of the chunk.
    pub slots: Vec<Slot>,
    /// The chunk row of each conversation still to score (its first occurrence).
    pub todo_rows: Vec<usize>,
    pub todo_keys: Vec<ConversationKey>,
    /// Duplicates and store hits so far.
    pub stats: ScoreStats,
}

impl ChunkPlan {
    /// Each row's result, given the results of the conversations that were still to score.
    pub fn assemble(self, todo: &[RowResult]) -> Vec<RowResult> {
        self.slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Failed(reason) => Err(reason),
                Slot::Stored(row) => Ok(row),
                Slot::Todo(t) => todo[t].clone(),
            })
            .collect()
    }
}

/// Duplicates and the score store in front of the model.
pub struct Memo {
    writer: Option<StoreWriter>,
}

impl Memo {
    pub fn new(memory: Option<Box<dyn ScoreMemory>>) -> Self {
        Self::with_policy(memory, CommitPolicy::default())
    }

    pub fn with_policy(memory: Option<Box<dyn ScoreMemory>>, policy: CommitPolicy) -> Self {
        let writer = memory.map(|m| StoreWriter::start(Arc::from(m), policy));
        Self { writer }
    }

    pub fn store_path(&self) -> Option<&Path> {
        self.writer.as_ref().map(|w| w.memory().path())
    }

    /// Scores committed to the store (what a rerun will not compute again), once every score
    /// handed to the writer is committed.
    pub fn committed_rows(&self) -> usize {
        self.flush();
        self.writer.as_ref().map_or(0, StoreWriter::committed_rows)
    }

    /// Waits until every score handed to the store writer is committed.
    pub fn flush(&self) {
        if let Some(w) = &self.writer {
            w.flush();
        }
    }

    /// Deduplicates a chunk's conversations and answers what the store knows.
    pub fn plan(&self, conversations: &[Result<Conversation<'_>, String>]) -> Result<ChunkPlan> {
        let mut stats = ScoreStats::default();
        let mut slots = Vec::with_capacity(conversations.len());
        let mut distinct = Distinct::new();
        let mut distinct_rows = Vec::new();
        for (row, conversation) in conversations.iter().enumerate() {
            let conversation = match conversation {
                Ok(c) => c,
                Err(reason) => {
                    slots.push(Slot::Failed(reason.clone()));
                    continue;
                }
            };
            let (t, first) = distinct.insert(conversation_key(conversation));
            if first {
                distinct_rows.push(row);
            } else {
                stats.duplicate_rows += 1;
            }
            slots.push(Slot::Todo(t));
        }
        let distinct_keys = distinct.keys();
        let stored = self.lookup(distinct_keys)?;
        // A stored conversation counts once as a store hit; its duplicates stay duplicates.
        stats.store_hits = stored.iter().filter(|s| s.is_some()).count();
        // Renumber the conversations still to score; stored ones answer their rows directly.
        let mut renumbered = Vec::with_capacity(distinct_rows.len());
        let (mut todo_rows, mut todo_keys) = (Vec::new(), Vec::new());
        for ((row, key), found) in distinct_rows.iter().zip(distinct_keys).zip(&stored) {
            renumbered.push(todo_rows.len());
            if found.is_none() {
                todo_rows.push(*row);
                todo_keys.push(*key);
            }
        }
        for slot in &mut slots {
            if let Slot::Todo(t) = *slot {
                *slot = match stored[t] {
                    Some(row) => Slot::Stored(row),
                    None => Slot::Todo(renumbered[t]),
                };
            }
        }
        Ok(ChunkPlan { slots, todo_rows, todo_keys, stats })
    }

    /// The scores the store has for `keys` (all `None` without a store), and those handed to
    /// the writer but not committed yet. A chunk is looked up again just before it runs: it was
    /// planned while the previous chunk was scoring, and rows the two share are known by now.
    pub fn lookup(&self, keys: &[ConversationKey]) -> Result<Vec<Option<RowScore>>> {
        let Some(writer) = &self.writer else { return Ok(vec![None; keys.len()]) };
        // After a failed commit redb refuses reads too: the store is set aside for the run.
        let mut found =
            if writer.failure().is_some() { vec![None; keys.len()] } else { writer.memory().get_many(keys)? };
        for (slot, pending) in found.iter_mut().zip(writer.pending(keys)) {
            if slot.is_none() {
                *slot = pending;
            }
        }
        Ok(found)
    }

    /// Hands one device batch's scores to the store writer (see [`super::store_writer`] for
    /// what happens when the store fails to write).
    pub fn commit(&self, rows: &[(ConversationKey, RowScore)]) {
        if let Some(w) = &self.writer {
            w.send(rows);
        }
    }

    /// Why the store was set aside during this run, if it was.
    pub fn store_failure(&self) -> Option<String> {
        self.flush();
        self.writer.as_ref().and_then(StoreWriter::failure)
    }

    /// Scores computed but not kept because the store failed to write.
    pub fn unsaved_rows(&self) -> usize {
        self.flush();
        self.writer.as_ref().map_or(0, StoreWriter::unsaved_rows)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use skyscore_core::ScoreRequest;

    use super::*;

    /// A store in memory that can be told to fail writes.
    #[derive(Default)]
    struct FakeMemory {
        rows: Mutex<HashMap<ConversationKey, RowScore>>,
        fail_writes: AtomicBool,
        /// put_many calls: durable commits.
        commits: AtomicUsize,
        /// Set by a failed write: reads fail from then on, as redb's do after an I/O error.
        poisoned: AtomicBool,
        path: PathBuf,
    }

    impl ScoreMemory for std::sync::Arc<FakeMemory> {
        fn get_many(&self, keys: &[ConversationKey]) -> Result<Vec<Option<RowScore>>> {
            if self.poisoned.load(Ordering::Relaxed) {
                anyhow::bail!("Previous I/O error occurred. Please close and re-open the database.");
            }
            let rows = self.rows.lock().unwrap();
            Ok(keys.iter().map(|k| rows.get(k).copied()).collect())
        }

        fn put_many(&self, rows: &[(ConversationKey, RowScore)]) -> Result<()> {
            if self.fail_writes.load(Ordering::Relaxed) {
                self.poisoned.store(true, Ordering::Relaxed);
                anyhow::bail!("No space left on device");
            }
            self.rows.lock().unwrap().extend(rows.iter().copied());
            self.commits.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }

        fn path(&self) -> &Path {
            &self.path
        }
    }

    fn conversation(text: &str) -> Conversation<'_> {
        ScoreRequest::new(text, None, "answer").conversation()
    }

    fn score(s: f32) -> RowScore {
        RowScore { score: s, tokens: 3, truncated: false, full_tokens: Some(3) }
    }

    #[test]
    fn duplicates_are_scored_once_and_answer_every_row() {
        let memo = Memo::new(None);
        let rows = vec![Ok(conversation("a")), Ok(conversation("b")), Err("NULL".to_string()), Ok(conversation("a"))];
        let plan = memo.plan(&rows).unwrap();
        assert_eq!(plan.todo_rows, [0, 1]);
        assert_eq!(plan.stats.duplicate_rows, 1);
        assert_eq!(plan.stats.store_hits, 0);
        let results = plan.assemble(&[Ok(score(1.0)), Err("too long".into())]);
        assert_eq!(results, [Ok(score(1.0)), Err("too long".into()), Err("NULL".into()), Ok(score(1.0))]);
        // Without a store, commits keep nothing and count nothing.
        memo.commit(&[(1, score(1.0))]);
        assert_eq!((memo.committed_rows(), memo.unsaved_rows()), (0, 0));
    }

    #[test]
    fn stored_conversations_skip_the_model_and_commits_are_found_again() {
        let fake = std::sync::Arc::new(FakeMemory::default());
        let memo = Memo::new(Some(Box::new(fake.clone())));
        let rows = vec![Ok(conversation("a")), Ok(conversation("b")), Ok(conversation("b"))];
        let key_b = conversation_key(&conversation("b"));
        fake.rows.lock().unwrap().insert(key_b, score(7.0));
        let plan = memo.plan(&rows).unwrap();
        assert_eq!(plan.todo_rows, [0], "only `a` is left for the model");
        assert_eq!((plan.stats.store_hits, plan.stats.duplicate_rows), (1, 1));
        memo.commit(&[(plan.todo_keys[0], score(2.0))]);
        // Handed over, not committed yet: the memo answers it already.
        assert_eq!(memo.lookup(&plan.todo_keys).unwrap(), [Some(score(2.0))]);
        assert_eq!(memo.committed_rows(), 1);
        assert_eq!(fake.rows.lock().unwrap().get(&plan.todo_keys[0]), Some(&score(2.0)), "committed by now");
        assert_eq!(memo.lookup(&plan.todo_keys).unwrap(), [Some(score(2.0))]);
        let results = plan.assemble(&[Ok(score(2.0))]);
        assert_eq!(results, [Ok(score(2.0)), Ok(score(7.0)), Ok(score(7.0))]);
        // A second plan of the same rows needs nothing from the model.
        assert!(memo.plan(&rows).unwrap().todo_rows.is_empty());
    }

    #[test]
    fn a_failing_store_counts_what_it_did_not_keep() {
        let fake = std::sync::Arc::new(FakeMemory::default());
        let memo = Memo::new(Some(Box::new(fake.clone())));
        memo.commit(&[(1, score(1.0))]);
        memo.flush();
        fake.fail_writes.store(true, Ordering::Relaxed);
        memo.commit(&[(2, score(2.0)), (3, score(3.0))]);
        memo.commit(&[(4, score(4.0))]);
        assert_eq!((memo.committed_rows(), memo.unsaved_rows()), (1, 3));
        assert!(memo.store_failure().unwrap().contains("No space left"));
        // The store is set aside: later chunks plan without it instead of failing on its reads.
        let rows = vec![Ok(conversation("a")), Ok(conversation("b"))];
        let plan = memo.plan(&rows).unwrap();
        assert_eq!(plan.todo_rows, [0, 1]);
        assert_eq!(memo.lookup(&[1]).unwrap(), [None]);
    }

    /// The scoring hands its batches over and goes on; the writer makes one commit of many.
    #[test]
    fn batches_are_grouped_into_few_commits_and_a_drop_commits_the_rest() {
        let fake = std::sync::Arc::new(FakeMemory::default());
        let policy = CommitPolicy { interval: Duration::from_secs(3600), max_rows: 64 };
        let memo = Memo::with_policy(Some(Box::new(fake.clone())), policy);
        for k in 0..100u128 {
            memo.commit(&[(k, score(k as f32))]);
        }
        assert_eq!(memo.committed_rows(), 100);
        // One commit when 64 rows were held, one for the rest at the flush.
        assert_eq!(fake.commits.load(Ordering::Relaxed), 2);
        memo.commit(&[(500, score(5.0))]);
        drop(memo);
        assert_eq!(fake.rows.lock().unwrap().len(), 101, "dropping the memo commits what it held");
        assert_eq!(fake.commits.load(Ordering::Relaxed), 3);
    }
}
