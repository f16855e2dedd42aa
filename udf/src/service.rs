//! One scorer per process, shared by every partition of every query: a batching worker thread
//! owns it, merges the rows that concurrently running partitions send, and hands each partition
//! its scores back in order. The score cache sits in front of it.
//!
//! Partitions block while their rows are scored (the UDF is synchronous); on a multi-threaded
//! tokio runtime they do so through `block_in_place`, so the runtime keeps driving scans.
//! The model itself uses the machine's cores through its own thread pool, and tokio workers
//! wait instead of competing with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use skyscore_core::{
    conversation_key, ChatTurn, Conversation, ConversationKey, Distinct, ScoreDistribution, ScoreStats, Scorer,
    ScorerError, StoreOutcome,
};

use crate::cache::ScoreCache;

/// Builds the scorer the first time a query needs it (model loading is lazy).
pub type ScorerLoader = Box<dyn Fn() -> Result<Arc<dyn Scorer>, String> + Send + Sync>;

/// Totals since the service started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceStats {
    /// Non-null rows `skywork_score` / `skywork_score_chat` were evaluated on (every evaluation).
    pub rows: usize,
    /// Of those, answered from the score cache or as duplicates of a row being scored.
    pub cache_hits: usize,
    /// The model's work (`model_s`: wall time inside the worker's scoring calls).
    pub model: ScoreStats,
    /// Scores the scorer's store failed to keep.
    pub store: StoreOutcome,
}

struct Job {
    /// The UDF that asked (its scores join that function's distribution).
    function: &'static str,
    keys: Vec<ConversationKey>,
    conversations: Vec<Conversation<'static>>,
    reply: Sender<Result<Vec<f32>, ScorerError>>,
}

struct Worker {
    jobs: Sender<Job>,
    scorer: Arc<dyn Scorer>,
}

#[derive(Default)]
struct Counters {
    rows: AtomicUsize,
    cache_hits: AtomicUsize,
    model: Mutex<ScoreStats>,
    /// Per function, the scores of the distinct rows the model scored for it.
    distributions: Mutex<BTreeMap<&'static str, ScoreDistribution>>,
}

/// Called after every [`ScoringService::score`] call (a cluster executor writes its figures).
pub type ScoreObserver = Box<dyn Fn(&ScoringService) + Send + Sync>;

pub struct ScoringService {
    loader: ScorerLoader,
    worker: OnceLock<Result<Worker, String>>,
    cache: Arc<Mutex<ScoreCache>>,
    counters: Arc<Counters>,
    /// Expectations (`skyscore.expected_model`) already compared with the scorer, and the outcome.
    checked: Mutex<HashMap<String, Result<(), String>>>,
    observer: OnceLock<ScoreObserver>,
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
            checked: Mutex::new(HashMap::new()),
            observer: OnceLock::new(),
        })
    }

    /// Runs `observer` after every scoring call from now on (only the first one set counts).
    pub fn set_observer(&self, observer: ScoreObserver) {
        let _ = self.observer.set(observer);
    }

    /// Checks that the scorer is the model a session expects (`expected`: the JSON of
    /// [`crate::options::SkyscoreOptions::expected_model`]); loads the scorer if needed. The
    /// outcome is remembered, so a query pays for the comparison once.
    pub fn check_model(&self, expected: &str) -> Result<(), ScorerError> {
        if let Some(outcome) = self.checked.lock().expect("check lock").get(expected) {
            return outcome.clone().map_err(ScorerError::Engine);
        }
        let scorer = self.scorer().map_err(ScorerError::Engine)?;
        let outcome = crate::options::check_expectation(expected, &scorer.facts().pairs())
            .map_err(|differences| format!("this scorer's model is not the one the query expects: {differences}"));
        self.checked.lock().expect("check lock").insert(expected.to_string(), outcome.clone());
        outcome.map_err(ScorerError::Engine)
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
        ServiceStats {
            rows: c.rows.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            model: *c.model.lock().expect("stats lock"),
            store: match self.worker.get() {
                Some(Ok(worker)) => worker.scorer.store_outcome(),
                _ => StoreOutcome::default(),
            },
        }
    }

    /// Per function (`skywork_score`, ...), the distribution of the scores of the distinct rows
    /// the model scored for it in this session (repeated evaluations and duplicates count once).
    pub fn distributions(&self) -> BTreeMap<String, ScoreDistribution> {
        let distributions = self.counters.distributions.lock().expect("stats lock");
        distributions.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    /// Scores conversations for `function`, from the cache where possible; scores come back
    /// in order. A row the scorer cannot score fails the call with [`ScorerError::Row`] naming
    /// it. Cache hits are answered here without copying anything; misses go to the worker.
    pub fn score(&self, function: &'static str, conversations: Vec<Conversation<'_>>) -> Result<Vec<f32>, ScorerError> {
        let result = self.score_rows(function, conversations);
        if let Some(observe) = self.observer.get() {
            observe(self);
        }
        result
    }

    fn score_rows(
        &self,
        function: &'static str,
        conversations: Vec<Conversation<'_>>,
    ) -> Result<Vec<f32>, ScorerError> {
        self.counters.rows.fetch_add(conversations.len(), Ordering::Relaxed);
        let keys: Vec<ConversationKey> = conversations.iter().map(|c| conversation_key(c)).collect();
        let mut scores: Vec<Option<f32>> = {
            let mut cache = self.cache.lock().expect("cache lock");
            keys.iter().map(|k| cache.get(k)).collect()
        };
        let miss_rows: Vec<usize> = (0..scores.len()).filter(|&i| scores[i].is_none()).collect();
        self.counters.cache_hits.fetch_add(scores.len() - miss_rows.len(), Ordering::Relaxed);
        if !miss_rows.is_empty() {
            let miss_keys: Vec<ConversationKey> = miss_rows.iter().map(|&i| keys[i]).collect();
            let mut conversations: Vec<Option<Conversation<'_>>> = conversations.into_iter().map(Some).collect();
            let misses: Vec<Conversation<'static>> = miss_rows
                .iter()
                .map(|&i| {
                    conversations[i].take().expect("each row once").into_iter().map(ChatTurn::into_owned).collect()
                })
                .collect();
            let computed = self.run(function, miss_keys, misses).map_err(|e| match e {
                ScorerError::Row { row, reason } => ScorerError::Row { row: miss_rows[row], reason },
                other => other,
            })?;
            for (&i, score) in miss_rows.iter().zip(computed) {
                scores[i] = Some(score);
            }
        }
        Ok(scores.into_iter().map(|s| s.expect("every row scored")).collect())
    }

    fn run(
        &self,
        function: &'static str,
        keys: Vec<ConversationKey>,
        conversations: Vec<Conversation<'static>>,
    ) -> Result<Vec<f32>, ScorerError> {
        let worker = self.worker().map_err(ScorerError::Engine)?;
        let (reply, rx) = channel();
        worker
            .jobs
            .send(Job { function, keys, conversations, reply })
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

/// Where a job's row gets its score: already known, or the k-th conversation to score.
enum Slot {
    Known(f32),
    Todo(usize),
}

/// The batching worker: takes every job waiting, looks each row up in the cache again (another
/// partition may have scored it meanwhile), scores the distinct remaining rows as one set (the
/// scorer sorts by length and cuts device batches), and splits the results back per job. Being
/// the only writer of new scores, it guarantees each distinct row runs through the model once.
/// A row that cannot be scored fails only the jobs that asked for it.
fn run_worker(scorer: Arc<dyn Scorer>, jobs: Receiver<Job>, counters: Arc<Counters>, cache: Arc<Mutex<ScoreCache>>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while let Ok(more) = jobs.try_recv() {
            batch.push(more);
        }
        let mut todo: Vec<Conversation<'static>> = Vec::new();
        let mut todo_functions: Vec<&'static str> = Vec::new();
        let mut slots: Vec<Vec<Slot>> = Vec::with_capacity(batch.len());
        let mut late_hits = 0;
        // The distinct rows still to score, numbered as `todo`.
        let mut pending = Distinct::new();
        {
            let mut cache = cache.lock().expect("cache lock");
            for job in batch.iter_mut() {
                let convs = std::mem::take(&mut job.conversations);
                let mut job_slots = Vec::with_capacity(convs.len());
                for (key, conv) in job.keys.iter().zip(convs) {
                    if let Some(score) = cache.get(key) {
                        late_hits += 1;
                        job_slots.push(Slot::Known(score));
                    } else {
                        let (t, first) = pending.insert(*key);
                        if first {
                            todo.push(conv);
                            todo_functions.push(job.function);
                        } else {
                            late_hits += 1;
                        }
                        job_slots.push(Slot::Todo(t));
                    }
                }
                slots.push(job_slots);
            }
        }
        counters.cache_hits.fetch_add(late_hits, Ordering::Relaxed);
        let started = Instant::now();
        let result = if todo.is_empty() { Ok(Default::default()) } else { scorer.score(&todo) };
        let scored = match result {
            Ok(scored) if scored.rows.len() == todo.len() => scored,
            Ok(scored) => {
                let e = format!("the scorer returned {} results for {} rows", scored.rows.len(), todo.len());
                batch.into_iter().for_each(|job| drop(job.reply.send(Err(ScorerError::Engine(e.clone())))));
                continue;
            }
            Err(e) => {
                batch.into_iter().for_each(|job| drop(job.reply.send(Err(e.clone()))));
                continue;
            }
        };
        {
            let mut stats = scored.stats;
            stats.model_s = started.elapsed().as_secs_f64();
            *counters.model.lock().expect("stats lock") += stats;
            let mut distributions = counters.distributions.lock().expect("stats lock");
            let mut cache = cache.lock().expect("cache lock");
            for ((key, function), row) in pending.keys().iter().zip(&todo_functions).zip(&scored.rows) {
                if let Ok(r) = row {
                    cache.insert(*key, r.score);
                    distributions.entry(function).or_default().add(r.score as f64);
                }
            }
        }
        for (job, job_slots) in batch.into_iter().zip(slots) {
            let reply = job_slots
                .into_iter()
                .enumerate()
                .map(|(row, slot)| match slot {
                    Slot::Known(score) => Ok(score),
                    Slot::Todo(t) => match &scored.rows[t] {
                        Ok(r) => Ok(r.score),
                        Err(reason) => Err(ScorerError::Row { row, reason: reason.clone() }),
                    },
                })
                .collect();
            let _ = job.reply.send(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeScorer;

    fn conv(text: &str) -> Conversation<'static> {
        vec![ChatTurn::new("user", text.to_string()), ChatTurn::new("assistant", "a")]
    }

    #[test]
    fn each_distinct_row_runs_once_and_repeats_come_from_the_cache() {
        let fake = FakeScorer::new();
        let service = ScoringService::new(fake.clone());
        let scores = service.score("f", vec![conv("x"), conv("yy"), conv("x")]).unwrap();
        assert_eq!(scores, [FakeScorer::score_of(&conv("x")), FakeScorer::score_of(&conv("yy")), scores[0]]);
        assert_eq!(service.score("f", vec![conv("yy")]).unwrap(), [scores[1]]);
        assert_eq!(fake.rows_scored(), 2);
        let stats = service.stats();
        assert_eq!((stats.rows, stats.cache_hits, stats.model.model_rows), (4, 2, 2));
    }

    #[test]
    fn each_function_has_the_distribution_of_its_distinct_rows() {
        let service = ScoringService::new(FakeScorer::new());
        service.score("a", vec![conv("x"), conv("x"), conv("yy")]).unwrap();
        service.score("b", vec![conv("zzz"), conv("x")]).unwrap(); // x: already scored for "a"
        let d = service.distributions();
        assert_eq!(d.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!((d["a"].count(), d["b"].count()), (2, 1));
        let b = d["b"].summary(4).unwrap();
        assert_eq!(b.min, FakeScorer::score_of(&conv("zzz")) as f64);
    }

    #[test]
    fn partitions_scoring_at_once_share_one_model_run_per_row() {
        let fake = FakeScorer::new();
        let service = ScoringService::new(fake.clone());
        // Eight partitions at once, all with the same 50 rows in different orders.
        let rows: Vec<String> = (0..50).map(|i| format!("row {i}")).collect();
        std::thread::scope(|s| {
            for p in 0..8 {
                let (service, rows) = (&service, &rows);
                s.spawn(move || {
                    let mine: Vec<Conversation> = (0..50).map(|i| conv(&rows[(i * 7 + p) % 50])).collect();
                    let expected: Vec<f32> = mine.iter().map(FakeScorer::score_of).collect();
                    assert_eq!(service.score("f", mine).unwrap(), expected);
                });
            }
        });
        assert_eq!(fake.rows_scored(), 50, "each distinct row ran through the model once");
        assert_eq!(service.stats().rows, 400);
        assert_eq!(service.stats().cache_hits, 350);
    }

    #[test]
    fn a_row_error_names_the_callers_row_and_spares_other_rows() {
        let fake = FakeScorer::new();
        let service = ScoringService::new(fake.clone());
        service.score("f", vec![conv("cached")]).unwrap();
        // The failing row is the third of this call, the second that reaches the model.
        let err =
            service.score("f", vec![conv("cached"), conv("fine"), conv(FakeScorer::BAD), conv("also")]).unwrap_err();
        assert_eq!(err, ScorerError::Row { row: 2, reason: FakeScorer::BAD_REASON.into() });
        // Rows scored beside the failing one were kept.
        let before = fake.rows_scored();
        service.score("f", vec![conv("fine"), conv("also")]).unwrap();
        assert_eq!(fake.rows_scored(), before);
    }

    #[test]
    fn an_engine_failure_reaches_every_caller() {
        let service = ScoringService::new(FakeScorer::failing());
        assert!(matches!(service.score("f", vec![conv("x")]), Err(ScorerError::Engine(_))));
        assert_eq!(service.score("f", vec![]).unwrap(), Vec::<f32>::new(), "nothing to score is not an error");
    }

    #[test]
    fn a_loader_error_is_reported_and_nothing_loads() {
        let service = ScoringService::lazy(Box::new(|| Err("no such model".into())), 10);
        assert!(!service.is_loaded());
        assert_eq!(service.score("f", vec![conv("x")]).unwrap_err(), ScorerError::Engine("no such model".into()));
        assert!(!service.is_loaded());
    }
}
