//! One scorer per process, shared by every partition of every query: a batching worker thread
//! owns it, merges the rows that concurrently running partitions send, and hands each partition
//! its scores back in order. The score cache sits in front of it.
//!
//! Partitions block while their rows are scored (the UDF is synchronous); on a multi-threaded
//! tokio runtime they do so through `block_in_place`, so the runtime keeps driving scans.
//! The model itself uses the machine's cores through its own thread pool, and tokio workers
//! wait instead of competing with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::cache::{cache_key, CacheKey, ScoreCache};
use crate::scorer::{ChatTurn, Conversation, ScoreStats, Scored, Scorer, ScorerError};

/// Builds the scorer the first time a query needs it (model loading is lazy).
pub type ScorerLoader = Box<dyn Fn() -> Result<Arc<dyn Scorer>, String> + Send + Sync>;

/// Totals since the service started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServiceStats {
    /// Non-null rows `skywork_score` / `skywork_score_chat` were evaluated on (every evaluation).
    pub rows: usize,
    /// Of those, answered from the score cache or as duplicates of a row being scored.
    pub cache_hits: usize,
    /// Rows the model actually ran.
    pub model_rows: usize,
    pub tokens: usize,
    pub padded_tokens: usize,
    pub truncated_rows: usize,
    pub batches: usize,
    /// Seconds the model spent scoring (wall time inside the worker).
    pub model_s: f64,
}

#[derive(Default)]
struct Counters {
    rows: AtomicUsize,
    model_rows: AtomicUsize,
    tokens: AtomicUsize,
    padded_tokens: AtomicUsize,
    truncated_rows: AtomicUsize,
    batches: AtomicUsize,
    model_us: AtomicUsize,
}

impl Counters {
    fn add(&self, s: &ScoreStats, micros: usize) {
        self.model_rows.fetch_add(s.rows, Ordering::Relaxed);
        self.tokens.fetch_add(s.tokens, Ordering::Relaxed);
        self.padded_tokens.fetch_add(s.padded_tokens, Ordering::Relaxed);
        self.truncated_rows.fetch_add(s.truncated_rows, Ordering::Relaxed);
        self.batches.fetch_add(s.batches, Ordering::Relaxed);
        self.model_us.fetch_add(micros, Ordering::Relaxed);
    }
}

struct Job {
    keys: Vec<CacheKey>,
    conversations: Vec<Conversation<'static>>,
    reply: Sender<Result<Vec<f32>, ScorerError>>,
}

struct Worker {
    jobs: Sender<Job>,
    scorer: Arc<dyn Scorer>,
}

pub struct ScoringService {
    loader: ScorerLoader,
    worker: OnceLock<Result<Worker, String>>,
    cache: Arc<Mutex<ScoreCache>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ScoringService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoringService").field("stats", &self.stats()).finish()
    }
}

/// Default bound of the score cache, in distinct rows. Measured: ~130 bytes of RSS per entry
/// (26 MB at 200,000 rows), so the default stays under ~260 MB with both generations full.
pub const DEFAULT_CACHE_ENTRIES: usize = 1_000_000;

impl ScoringService {
    /// A service over an already loaded scorer.
    pub fn new(scorer: Arc<dyn Scorer>) -> Arc<Self> {
        Self::lazy(Box::new(move || Ok(scorer.clone())), DEFAULT_CACHE_ENTRIES)
    }

    /// A service that loads its scorer on first use.
    pub fn lazy(loader: ScorerLoader, cache_entries: usize) -> Arc<Self> {
        Arc::new(Self {
            loader,
            worker: OnceLock::new(),
            cache: Arc::new(Mutex::new(ScoreCache::new(cache_entries))),
            counters: Arc::new(Counters::default()),
        })
    }

    /// Loads the scorer now if it is not loaded yet.
    pub fn scorer(&self) -> Result<Arc<dyn Scorer>, String> {
        self.worker().map(|w| w.scorer.clone())
    }

    pub fn is_loaded(&self) -> bool {
        matches!(self.worker.get(), Some(Ok(_)))
    }

    fn worker(&self) -> Result<&Worker, String> {
        self.worker
            .get_or_init(|| {
                let scorer = (self.loader)()?;
                let (jobs, rx) = channel::<Job>();
                let (s, counters, cache) = (scorer.clone(), self.counters.clone(), self.cache.clone());
                std::thread::Builder::new()
                    .name("skyscore-batcher".into())
                    .spawn(move || run_worker(s, rx, counters, cache))
                    .map_err(|e| format!("cannot start the scoring worker: {e}"))?;
                Ok(Worker { jobs, scorer })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    pub fn stats(&self) -> ServiceStats {
        let c = &self.counters;
        let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        ServiceStats {
            rows: get(&c.rows),
            cache_hits: get(&c.rows).saturating_sub(get(&c.model_rows)),
            model_rows: get(&c.model_rows),
            tokens: get(&c.tokens),
            padded_tokens: get(&c.padded_tokens),
            truncated_rows: get(&c.truncated_rows),
            batches: get(&c.batches),
            model_s: get(&c.model_us) as f64 / 1e6,
        }
    }

    /// Scores conversations, from the cache where possible; scores come back in order.
    /// Cache hits are answered here without copying anything; misses go to the worker.
    pub fn score(&self, conversations: Vec<Conversation<'_>>) -> Result<Vec<f32>, ScorerError> {
        self.counters.rows.fetch_add(conversations.len(), Ordering::Relaxed);
        let keys: Vec<CacheKey> = conversations.iter().map(|c| cache_key(c)).collect();
        let mut scores: Vec<Option<f32>> = {
            let mut cache = self.cache.lock().expect("cache lock");
            keys.iter().map(|k| cache.get(k)).collect()
        };
        let miss_rows: Vec<usize> = (0..scores.len()).filter(|&i| scores[i].is_none()).collect();
        if !miss_rows.is_empty() {
            let miss_keys: Vec<CacheKey> = miss_rows.iter().map(|&i| keys[i]).collect();
            let mut conversations: Vec<Option<Conversation<'_>>> = conversations.into_iter().map(Some).collect();
            let misses: Vec<Conversation<'static>> = miss_rows
                .iter()
                .map(|&i| {
                    conversations[i].take().expect("each row once").into_iter().map(ChatTurn::into_owned).collect()
                })
                .collect();
            let computed = self.run(miss_keys, misses).map_err(|e| match e {
                ScorerError::Row { row, reason } => ScorerError::Row { row: miss_rows[row], reason },
                other => other,
            })?;
            for (&i, score) in miss_rows.iter().zip(computed) {
                scores[i] = Some(score);
            }
        }
        Ok(scores.into_iter().map(|s| s.expect("every row scored")).collect())
    }

    fn run(&self, keys: Vec<CacheKey>, conversations: Vec<Conversation<'static>>) -> Result<Vec<f32>, ScorerError> {
        let worker = self.worker().map_err(ScorerError::Engine)?;
        let (reply, rx) = channel();
        worker
            .jobs
            .send(Job { keys, conversations, reply })
            .map_err(|_| ScorerError::Engine("the scoring worker has stopped".into()))?;
        let wait = || rx.recv().unwrap_or_else(|_| Err(ScorerError::Engine("the scoring worker has stopped".into())));
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

/// The batching worker: takes every job waiting, looks each row up in the cache again (another
/// partition may have scored it meanwhile), scores the distinct remaining rows as one set (the
/// scorer sorts by length and cuts device batches), and splits the scores back per job. Being
/// the only writer of new scores, it guarantees each distinct row runs through the model once.
fn run_worker(scorer: Arc<dyn Scorer>, jobs: Receiver<Job>, counters: Arc<Counters>, cache: Arc<Mutex<ScoreCache>>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while let Ok(more) = jobs.try_recv() {
            batch.push(more);
        }
        // slot[job][row]: Ok(score) when known, Err(index) into `todo` when it must be scored.
        let mut todo: Vec<Conversation<'static>> = Vec::new();
        let mut todo_keys: Vec<CacheKey> = Vec::new();
        let mut owner: Vec<(usize, usize)> = Vec::new(); // (job, row) that first asked for each todo
        let mut slots: Vec<Vec<Result<f32, usize>>> = Vec::with_capacity(batch.len());
        {
            let mut cache = cache.lock().expect("cache lock");
            let mut pending: HashMap<CacheKey, usize> = HashMap::new();
            for (j, job) in batch.iter_mut().enumerate() {
                let convs = std::mem::take(&mut job.conversations);
                let mut job_slots = Vec::with_capacity(convs.len());
                for (r, (key, conv)) in job.keys.iter().zip(convs).enumerate() {
                    if let Some(score) = cache.get(key) {
                        job_slots.push(Ok(score));
                    } else if let Some(&t) = pending.get(key) {
                        job_slots.push(Err(t));
                    } else {
                        pending.insert(*key, todo.len());
                        job_slots.push(Err(todo.len()));
                        todo.push(conv);
                        todo_keys.push(*key);
                        owner.push((j, r));
                    }
                }
                slots.push(job_slots);
            }
        }
        let started = Instant::now();
        let result = if todo.is_empty() { Ok(Scored::default()) } else { scorer.score(&todo) };
        match result {
            Ok(scored) => {
                counters.add(&scored.stats, started.elapsed().as_micros() as usize);
                {
                    let mut cache = cache.lock().expect("cache lock");
                    for (key, score) in todo_keys.iter().zip(&scored.scores) {
                        cache.insert(*key, *score);
                    }
                }
                for (job, job_slots) in batch.into_iter().zip(slots) {
                    let scores = job_slots.into_iter().map(|s| s.unwrap_or_else(|t| scored.scores[t])).collect();
                    let _ = job.reply.send(Ok(scores));
                }
            }
            Err(e) => {
                // Row numbers refer to the merged set; report them in each job's own terms.
                for (j, job) in batch.into_iter().enumerate() {
                    let err = match &e {
                        ScorerError::Row { row, reason } if owner[*row].0 == j => {
                            ScorerError::Row { row: owner[*row].1, reason: reason.clone() }
                        }
                        ScorerError::Row { reason, .. } => {
                            ScorerError::Engine(format!("a row of another partition failed: {reason}"))
                        }
                        other => other.clone(),
                    };
                    let _ = job.reply.send(Err(err));
                }
            }
        }
    }
}
