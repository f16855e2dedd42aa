//! The memo: what a chunk of rows needs from the model once duplicates and the score store have
//! answered what they can. A chunk's rows are deduplicated by conversation, looked up in the
//! store, and only conversations never scored with this model go on to be tokenized; each device
//! batch's scores are committed as soon as they exist. No candle here: it is tested over a fake
//! store.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use skyscore_core::{conversation_key, Conversation, ConversationKey, Distinct, RowResult, RowScore, ScoreStats};

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
    memory: Option<Box<dyn ScoreMemory>>,
    /// Scores committed to the store (what a rerun will not compute again).
    committed: AtomicUsize,
    /// Scores that could not be committed (the store failed to write).
    unsaved: AtomicUsize,
    /// Why the store was set aside, from its first failed write on (for the rest of the run).
    failure: std::sync::Mutex<Option<String>>,
}

impl Memo {
    pub fn new(memory: Option<Box<dyn ScoreMemory>>) -> Self {
        Self {
            memory,
            committed: AtomicUsize::new(0),
            unsaved: AtomicUsize::new(0),
            failure: std::sync::Mutex::new(None),
        }
    }

    pub fn store_path(&self) -> Option<&Path> {
        self.memory.as_deref().map(ScoreMemory::path)
    }

    pub fn committed_rows(&self) -> usize {
        self.committed.load(Ordering::Relaxed)
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

    /// The scores the store has for `keys` (all `None` without a store). A chunk is looked up
    /// again just before it runs: it was planned while the previous chunk was scoring, and
    /// rows the two share are in the store now.
    pub fn lookup(&self, keys: &[ConversationKey]) -> Result<Vec<Option<RowScore>>> {
        match &self.memory {
            Some(memory) if !self.set_aside() => memory.get_many(keys),
            _ => Ok(vec![None; keys.len()]),
        }
    }

    /// Commits one device batch's scores.
    ///
    /// The policy for a store that fails to write (a full disk, an I/O error), the same for
    /// `score`, `sql` and cluster executors: the run goes on without the store. The first
    /// failure is logged and sets the store aside for the rest of the run (after a failed
    /// commit, redb refuses reads too, so looking up there would end the run instead); every
    /// score not kept is counted ([`Self::unsaved_rows`]) and the end-of-run summary says how
    /// many a rerun will compute again. Scores already committed stay in the store.
    pub fn commit(&self, rows: &[(ConversationKey, RowScore)]) {
        let Some(memory) = &self.memory else { return };
        if self.set_aside() {
            self.unsaved.fetch_add(rows.len(), Ordering::Relaxed);
            return;
        }
        match memory.put_many(rows) {
            Ok(()) => {
                self.committed.fetch_add(rows.len(), Ordering::Relaxed);
            }
            Err(e) => {
                self.unsaved.fetch_add(rows.len(), Ordering::Relaxed);
                let mut failure = self.failure.lock().expect("failure lock");
                if failure.is_none() {
                    let reason = format!("{e:#}");
                    tracing::warn!(
                        "cannot write to the score store {}: {reason}; the run goes on without the store \
                         (scores computed from now on are not saved)",
                        memory.path().display()
                    );
                    *failure = Some(reason);
                }
            }
        }
    }

    fn set_aside(&self) -> bool {
        self.failure.lock().expect("failure lock").is_some()
    }

    /// Why the store was set aside during this run, if it was.
    pub fn store_failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }

    /// Scores computed but not kept because the store failed to write.
    pub fn unsaved_rows(&self) -> usize {
        self.unsaved.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    use skyscore_core::ScoreRequest;

    use super::*;

    /// A store in memory that can be told to fail writes.
    #[derive(Default)]
    struct FakeMemory {
        rows: Mutex<HashMap<ConversationKey, RowScore>>,
        fail_writes: AtomicBool,
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
        assert_eq!(memo.committed_rows(), 1);
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
}
