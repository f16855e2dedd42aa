//! Commits scores to the store beside the scoring: device batches hand their scores to a writer
//! thread and go on; the writer groups them into one durable commit every [`CommitPolicy`]
//! interval or row count, whichever comes first. The scoring never waits on a sync, and what a
//! kill can lose is bounded by one interval (plus the batch in flight). Scores handed over but
//! not committed yet still answer lookups of this run, so a later chunk never scores them again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use skyscore_core::{ConversationKey, RowScore};

use super::memo::ScoreMemory;

/// When the writer commits what it holds.
#[derive(Debug, Clone, Copy)]
pub struct CommitPolicy {
    /// Longest a handed-over score waits for its commit.
    pub interval: Duration,
    /// Most scores one commit waits for.
    pub max_rows: usize,
}

impl Default for CommitPolicy {
    /// Four commits a second at most: on a local disk a sync costs about a millisecond, on a
    /// network file system several; either way the GPU or CPU never waits for it.
    fn default() -> Self {
        Self { interval: Duration::from_millis(250), max_rows: 8192 }
    }
}

enum Message {
    Rows(Vec<(ConversationKey, RowScore)>),
    /// Commit everything held, then answer.
    Flush(mpsc::Sender<()>),
}

/// What the writer and the scoring threads share.
struct Shared {
    memory: Arc<dyn ScoreMemory>,
    /// Handed over, not committed yet.
    pending: Mutex<HashMap<ConversationKey, RowScore>>,
    committed: AtomicUsize,
    unsaved: AtomicUsize,
    /// Why the store was set aside, from its first failed commit on (for the rest of the run).
    failure: Mutex<Option<String>>,
}

pub struct StoreWriter {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Message>>,
    thread: Option<JoinHandle<()>>,
}

impl StoreWriter {
    pub fn start(memory: Arc<dyn ScoreMemory>, policy: CommitPolicy) -> Self {
        let shared = Arc::new(Shared {
            memory,
            pending: Mutex::new(HashMap::new()),
            committed: AtomicUsize::new(0),
            unsaved: AtomicUsize::new(0),
            failure: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel();
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("skyscore-store-writer".into())
            .spawn(move || write_loop(&for_thread, &rx, policy))
            .expect("start the store writer thread");
        Self { shared, tx: Some(tx), thread: Some(thread) }
    }

    /// Hands scores over for the next commit; returns at once.
    pub fn send(&self, rows: &[(ConversationKey, RowScore)]) {
        if rows.is_empty() {
            return;
        }
        self.shared.pending.lock().expect("pending lock").extend(rows.iter().copied());
        if let Some(tx) = &self.tx {
            if tx.send(Message::Rows(rows.to_vec())).is_err() {
                self.shared.unsaved.fetch_add(rows.len(), Ordering::Relaxed);
            }
        }
    }

    /// Waits until every score handed over is committed (or counted as unsaved).
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if let Some(tx) = &self.tx {
            if tx.send(Message::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }

    /// Scores handed over and not committed yet, for `keys` (`None` elsewhere).
    pub fn pending(&self, keys: &[ConversationKey]) -> Vec<Option<RowScore>> {
        let pending = self.shared.pending.lock().expect("pending lock");
        keys.iter().map(|k| pending.get(k).copied()).collect()
    }

    pub fn committed_rows(&self) -> usize {
        self.shared.committed.load(Ordering::Relaxed)
    }

    pub fn unsaved_rows(&self) -> usize {
        self.shared.unsaved.load(Ordering::Relaxed)
    }

    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().expect("failure lock").clone()
    }

    pub fn memory(&self) -> &dyn ScoreMemory {
        self.shared.memory.as_ref()
    }
}

impl Drop for StoreWriter {
    /// Commits what is held before the engine goes (the end of a run, an error, Ctrl-C).
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(shared: &Shared, rx: &mpsc::Receiver<Message>, policy: CommitPolicy) {
    let mut held: Vec<(ConversationKey, RowScore)> = Vec::new();
    let mut since: Option<Instant> = None;
    loop {
        let timeout = since.map_or(Duration::from_secs(3600), |t| policy.interval.saturating_sub(t.elapsed()));
        match rx.recv_timeout(timeout) {
            Ok(Message::Rows(rows)) => {
                held.extend(rows);
                since.get_or_insert_with(Instant::now);
                if held.len() >= policy.max_rows {
                    commit(shared, &mut held);
                    since = None;
                }
            }
            Ok(Message::Flush(done)) => {
                commit(shared, &mut held);
                since = None;
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                commit(shared, &mut held);
                since = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                commit(shared, &mut held);
                return;
            }
        }
    }
}

/// One durable commit of `held`. The policy for a store that fails to write (a full disk, an
/// I/O error), the same for `score`, `sql` and cluster executors: the run goes on without the
/// store. The first failure is logged and sets the store aside for the rest of the run (after
/// a failed commit redb refuses reads too); every score not kept is counted, and the
/// end-of-run summary says how many a rerun will compute again.
fn commit(shared: &Shared, held: &mut Vec<(ConversationKey, RowScore)>) {
    if held.is_empty() {
        return;
    }
    let set_aside = shared.failure.lock().expect("failure lock").is_some();
    let outcome = if set_aside { Err(None) } else { shared.memory.put_many(held).map_err(Some) };
    match outcome {
        Ok(()) => {
            let committed = shared.committed.fetch_add(held.len(), Ordering::Relaxed) + held.len();
            // Tests wait for this line to know scores are durable.
            tracing::debug!(rows = held.len(), committed, "scores committed to the store");
        }
        Err(error) => {
            shared.unsaved.fetch_add(held.len(), Ordering::Relaxed);
            if let Some(e) = error {
                let reason = format!("{e:#}");
                tracing::warn!(
                    "cannot write to the score store {}: {reason}; the run goes on without the store \
                     (scores computed from now on are not saved)",
                    shared.memory.path().display()
                );
                *shared.failure.lock().expect("failure lock") = Some(reason);
            }
        }
    }
    let mut pending = shared.pending.lock().expect("pending lock");
    for (key, _) in held.iter() {
        pending.remove(key);
    }
    held.clear();
}
