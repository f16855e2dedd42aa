//! The scoring engine: a loaded checkpoint and the one path from conversations to scores.
//!
//! Four parts, each with one job: [`load`] opens the files, the devices and the store;
//! [`memo`] answers duplicates and stored rows; [`store_writer`] commits new scores beside the
//! scoring; [`runner`] turns token rows into logits on the devices. [`Engine::score_chunks`]
//! joins them: chunks of
//! conversations are planned and tokenized on their own thread (rayon inside) while the device
//! works through the previous chunk.
//!
//! Front ends adapt to [`Engine::score_chunks`]: `skyscore score` with windows of its input
//! table, the SQL service through [`Scorer`] with the rows of one merged request.

mod load;
pub mod memo;
mod runner;
pub mod store_writer;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use skyscore_core::{
    ChatTurn, Conversation, ConversationKey, ModelFacts, RowResult, RowScore, ScoreStats, Scored, Scorer, ScorerError,
    StoreOutcome,
};

pub use load::{describe_model, resident_weight_bytes, ComputePath};
use memo::Memo;
use runner::Runner;

use crate::checkpoint::Checkpoint;
use crate::device::{DeviceList, DeviceSpec};
use crate::encode::{Encoded, PromptEncoder, TruncationSide};
use crate::models::Dtype;

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub max_length: usize,
    pub truncation_side: TruncationSide,
    /// Most rows per forward pass on CPU. GPU batches are sized by `max_batch_tokens` alone:
    /// a card needs tens of thousands of tokens per pass to be busy, and scores do not depend
    /// on how rows are batched.
    pub batch_size: usize,
    /// Padded tokens per device batch; `None` picks a default for the device.
    pub max_batch_tokens: Option<usize>,
    /// One model replica per entry (several entries: batches are spread over them).
    pub devices: DeviceList,
    pub dtype: Dtype,
    /// Rows tokenized, length-sorted and scored as one chunk (the next chunk is tokenized while
    /// the device works on this one); `None` picks a default for the device.
    pub chunk_rows: Option<usize>,
    /// The persistent score store file (`None`: no store).
    pub store: Option<PathBuf>,
    /// How long to wait for a store another program holds exclusively before running without it.
    pub store_wait: Duration,
    /// Most bytes one CPU forward pass may use for its activations (`None`: no limit). Batches
    /// are cut to fit, and a row that cannot fit alone is refused as a row error before
    /// anything is allocated.
    pub max_memory: Option<u64>,
    /// `--dtype bf16` on CPU through candle's bf16 ops (the GPU's path) instead of skyscore's
    /// own (the AVX512-BF16 kernel where the CPU has it, else bf16-rounded weights in the f32
    /// path). Tests use it to check candle's path on any CPU; `SKYSCORE_CANDLE_BF16=1` sets it.
    pub candle_bf16: bool,
    /// When the caller sets this flag, the run stops between device batches with
    /// [`EngineError::Stopped`]; every score computed so far is committed to the store (by the
    /// time [`Engine::committed_rows`] answers).
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_length: 4096,
            truncation_side: TruncationSide::Right,
            batch_size: 16,
            max_batch_tokens: None,
            devices: DeviceList(vec![DeviceSpec::Cpu]),
            dtype: Dtype::F32,
            chunk_rows: None,
            store: None,
            store_wait: crate::store::DEFAULT_WAIT,
            max_memory: None,
            candle_bf16: std::env::var("SKYSCORE_CANDLE_BF16").is_ok_and(|v| v == "1"),
            stop: None,
        }
    }
}

impl EngineOptions {
    /// Whether the model runs on GPUs (bf16, token-budgeted batches, larger chunks).
    pub fn on_gpu(&self) -> bool {
        self.devices.on_gpu()
    }

    pub fn chunk_rows(&self) -> usize {
        let default = if self.on_gpu() { DEFAULT_GPU_CHUNK_ROWS } else { DEFAULT_CPU_CHUNK_ROWS };
        self.chunk_rows.unwrap_or(default).max(1)
    }
}

/// The memory this process may use, in bytes: the machine's (MemTotal of /proc/meminfo), or
/// its container's limit (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`) when that is
/// lower. `None` off Linux.
pub fn usable_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 =
        text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    let host = kb * 1024;
    Some(cgroup_memory_limit().map_or(host, |limit| limit.min(host)))
}

/// The memory limit of this process's cgroup, if one is set.
fn cgroup_memory_limit() -> Option<u64> {
    let parse = |text: String| text.trim().parse::<u64>().ok();
    // cgroup v2: the process's own group (`0::/path`), then the namespace's root.
    let own = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|text| {
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim().to_string();
        std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", path.trim_end_matches('/'))).ok()
    });
    let v2 = own.or_else(|| std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()).and_then(parse);
    // cgroup v1 writes a huge number for "no limit".
    let v1 = std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        .ok()
        .and_then(parse)
        .filter(|&bytes| bytes < 1 << 60);
    v2.or(v1)
}

/// The default `max_memory`: 80% of [`usable_memory`]; elsewhere no limit.
pub fn default_max_memory() -> Option<u64> {
    usable_memory().map(|bytes| bytes / 10 * 8)
}

/// Default padded-token budget of one forward pass. On a GPU it is what keeps the card busy
/// (a 1B model needs ~64K tokens per pass). On CPU, 2048 measured fastest (llama-bench 22.5M:
/// 4,230–4,879 tok/s at 8192, 5,780–6,563 at 2048; Qwen3-0.6B shape: 24.0 s of model time at
/// 8192, 17.5–18.5 s at 1024–2048): a smaller batch's activations stay in cache and are reused
/// instead of arriving as freshly zeroed pages.
pub const DEFAULT_CPU_BATCH_TOKENS: usize = 2048;
pub const DEFAULT_GPU_BATCH_TOKENS: usize = 65536;
/// Default rows per chunk: enough for length sorting to pack batches tightly, small enough that
/// tokenizing the next chunk overlaps the model instead of delaying the first batch.
pub const DEFAULT_CPU_CHUNK_ROWS: usize = 1024;
pub const DEFAULT_GPU_CHUNK_ROWS: usize = 16384;

/// Why the engine could not load or score.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The options cannot run (a zero batch size, a max_length beyond the model's...).
    #[error("{0}")]
    Options(String),
    /// The model could not be loaded: its files, config, template, tokenizer or device.
    #[error("{0:#}")]
    Load(anyhow::Error),
    /// A forward pass ran the device out of memory (its batch can run again in halves).
    #[error("{context}: out of device memory ({source}); lower --max-batch-tokens")]
    OutOfMemory { context: String, source: candle_core::Error },
    /// A forward pass failed for another reason.
    #[error("{context}: {source}")]
    Forward { context: String, source: candle_core::Error },
    /// The score store could not be read.
    #[error("reading the score store: {0:#}")]
    Store(anyhow::Error),
    /// The caller's stop flag was set; every score computed so far is committed.
    #[error("stopped on request")]
    Stopped,
    /// An error of the caller's chunk source or sink, passed on as it was.
    #[error("{0:#}")]
    Caller(anyhow::Error),
}

/// A unit of rows the engine tokenizes and scores together (a window of an input table, a slice
/// of a SQL request). The engine asks for its conversations on the tokenizing thread.
pub trait ConversationChunk: Send {
    /// One entry per row, in row order: its conversation, or why the caller could not build one
    /// (a NULL column, say). Such rows come back as row errors, untouched by the model.
    fn conversations(&self) -> Vec<Result<Conversation<'_>, String>>;
}

/// A chunk ready for the device: what each row needs, and the distinct conversations to score.
struct PreparedChunk<C> {
    chunk: C,
    plan: memo::ChunkPlan,
    /// One per conversation still to score: its tokens, or why it cannot be scored.
    todo: Vec<Result<Encoded, String>>,
}

pub struct Engine {
    checkpoint: Checkpoint,
    encoder: PromptEncoder,
    runner: Runner,
    memo: Memo,
    facts: ModelFacts,
    /// Estimated activation bytes per token of a batch (f32), for the memory limit.
    bytes_per_token: u64,
    /// `--max-memory` on CPU.
    max_memory: Option<u64>,
    chunk_rows: usize,
}

/// Attention scores computed at once are bounded by the blocked attention (64M f32 scores).
const ATTENTION_BLOCK_BYTES: u64 = 256 << 20;

impl Engine {
    /// Scores committed to the store by this engine so far.
    pub fn committed_rows(&self) -> usize {
        self.memo.committed_rows()
    }

    /// Whether the store failed during this run, and what it cost.
    pub fn store_outcome(&self) -> StoreOutcome {
        StoreOutcome {
            committed_rows: self.memo.committed_rows(),
            unsaved_rows: self.memo.unsaved_rows(),
            store_failure: self.memo.store_failure(),
        }
    }

    /// The score store this engine reads and writes, if any.
    pub fn store_path(&self) -> Option<&std::path::Path> {
        self.memo.store_path()
    }

    pub fn encoder(&self) -> &PromptEncoder {
        &self.encoder
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// What the scores depend on besides the conversation.
    pub fn facts(&self) -> &ModelFacts {
        &self.facts
    }

    /// The key-value metadata written next to scores: this version, then the facts.
    pub fn metadata(&self) -> Vec<(String, String)> {
        self.facts.metadata(env!("CARGO_PKG_VERSION"))
    }

    /// Scores a stream of chunks: the next chunk is tokenized on its own thread while this one
    /// runs through the model, and `on_scored` gets each chunk back with one result per row, in
    /// order. `on_batch(rows, tokens)` follows the device batches (progress bars). The first
    /// error of `chunks`, of the model or of `on_scored` ends the stream.
    pub fn score_chunks<C: ConversationChunk>(
        &self,
        chunks: impl Iterator<Item = anyhow::Result<C>> + Send,
        on_batch: &(dyn Fn(usize, usize) + Sync),
        mut on_scored: impl FnMut(C, Scored) -> anyhow::Result<()>,
    ) -> Result<(), EngineError> {
        // One chunk waits while one is scored: memory stays bounded by two chunks.
        let (tx, rx) = mpsc::sync_channel::<Result<PreparedChunk<C>, EngineError>>(1);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for chunk in chunks {
                    let item = chunk.map_err(EngineError::Caller).and_then(|c| self.prepare_chunk(c));
                    let failed = item.is_err();
                    if tx.send(item).is_err() || failed {
                        break;
                    }
                }
            });
            for item in rx {
                let PreparedChunk { chunk, plan, todo } = item?;
                self.runner.check_stop()?;
                let known = self.memo.lookup(&plan.todo_keys).map_err(EngineError::Store)?;
                let todo_results = self.score_todo(&todo, &plan.todo_keys, &known, on_batch)?;
                let mut stats = plan.stats;
                stats += todo_results.stats;
                stats.store_hits += known.iter().filter(|k| k.is_some()).count();
                let rows = plan.assemble(&todo_results.rows);
                on_scored(chunk, Scored { rows, stats }).map_err(EngineError::Caller)?;
            }
            Ok(())
        })
    }

    /// Deduplicates a chunk's rows, answers what the score store knows, and tokenizes the rest in
    /// parallel (a row that cannot be tokenized carries its reason).
    fn prepare_chunk<C: ConversationChunk>(&self, chunk: C) -> Result<PreparedChunk<C>, EngineError> {
        let conversations = chunk.conversations();
        let plan = self.memo.plan(&conversations).map_err(EngineError::Store)?;
        let todo = plan
            .todo_rows
            .par_iter()
            .map(|&row| {
                let conversation = conversations[row].as_ref().map_err(Clone::clone)?;
                let encoded = self.encoder.encode_conversation(conversation).map_err(|e| e.to_string())?;
                if encoded.ids.is_empty() {
                    return Err("the prompt tokenizes to no tokens".to_string());
                }
                self.check_memory(encoded.ids.len())?;
                Ok(encoded)
            })
            .collect();
        drop(conversations);
        Ok(PreparedChunk { chunk, plan, todo })
    }

    /// Refuses a row whose forward pass alone would need more memory than `--max-memory`.
    fn check_memory(&self, tokens: usize) -> Result<(), String> {
        let Some(limit) = self.max_memory else { return Ok(()) };
        let need = tokens as u64 * self.bytes_per_token + ATTENTION_BLOCK_BYTES;
        if need > limit {
            return Err(format!(
                "its {tokens} tokens need about {:.1} GB to score, over the memory limit of {:.1} GB (--max-memory); \
                 lower --max-length",
                need as f64 / 1e9,
                limit as f64 / 1e9
            ));
        }
        Ok(())
    }

    /// Runs the distinct rows that tokenized (and are not `known` by now) through the model,
    /// committing each device batch's scores to the store; row errors pass through, and a
    /// non-finite score becomes one (it would poison every ranking and threshold downstream, and
    /// is never stored).
    fn score_todo(
        &self,
        encoded: &[Result<Encoded, String>],
        keys: &[ConversationKey],
        known: &[Option<RowScore>],
        on_batch: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Scored, EngineError> {
        let valid: Vec<(usize, &Encoded)> = encoded
            .iter()
            .enumerate()
            .filter(|(i, _)| known[*i].is_none())
            .filter_map(|(i, e)| e.as_ref().ok().map(|e| (i, e)))
            .collect();
        let ids: Vec<&[u32]> = valid.iter().map(|(_, e)| e.ids.as_slice()).collect();
        let row_score = |k: usize, score: f32| {
            let enc = valid[k].1;
            score.is_finite().then_some(RowScore {
                score,
                tokens: enc.ids.len() as u32,
                truncated: enc.truncated,
                full_tokens: Some(enc.full_tokens as u32),
            })
        };
        let mut commit = |batch: &[usize], logits: &[f32], batch_stats: &ScoreStats| {
            let rows: Vec<(ConversationKey, RowScore)> = batch
                .iter()
                .zip(logits)
                .filter_map(|(&k, &score)| row_score(k, score).map(|r| (keys[valid[k].0], r)))
                .collect();
            self.memo.commit(&rows);
            // Tests wait for this line to stop a run at a known point.
            tracing::debug!(rows = batch.len(), "device batch scored");
            on_batch(batch.len(), batch_stats.tokens);
        };
        let started = Instant::now();
        let (logits, mut stats) = self.runner.run(&ids, &mut commit)?;
        stats.model_s = started.elapsed().as_secs_f64();
        stats.truncated_rows = valid.iter().filter(|(_, e)| e.truncated).count();
        let mut rows: Vec<RowResult> = encoded
            .iter()
            .zip(known)
            .map(|(e, known)| match known {
                Some(row) => Ok(*row),
                None => Err(e.as_ref().err().cloned().unwrap_or_default()),
            })
            .collect();
        for (k, ((i, _), score)) in valid.iter().zip(logits).enumerate() {
            rows[*i] = row_score(k, score).ok_or_else(|| format!("the model gave a non-finite score ({score})"));
        }
        Ok(Scored { rows, stats })
    }
}

/// A slice of conversations as one chunk, borrowed as it is.
struct SliceChunk<'s, 'a>(&'s [Conversation<'a>]);

impl ConversationChunk for SliceChunk<'_, '_> {
    fn conversations(&self) -> Vec<Result<Conversation<'_>, String>> {
        self.0.iter().map(|c| Ok(c.iter().map(ChatTurn::borrowed).collect())).collect()
    }
}

/// The SQL service's view of the engine: one call per merged request, chunked like any stream.
impl Scorer for Engine {
    fn score(&self, conversations: &[Conversation<'_>]) -> Result<Scored, ScorerError> {
        let mut all = Scored { rows: Vec::with_capacity(conversations.len()), stats: ScoreStats::default() };
        let chunks = conversations.chunks(self.chunk_rows).map(|c| Ok(SliceChunk(c)));
        self.score_chunks(chunks, &|_, _| {}, |_, scored| {
            all.rows.extend(scored.rows);
            all.stats += scored.stats;
            Ok(())
        })
        .map_err(|e| ScorerError::Engine(e.to_string()))?;
        Ok(all)
    }

    fn facts(&self) -> ModelFacts {
        self.facts.clone()
    }

    fn store_outcome(&self) -> StoreOutcome {
        Engine::store_outcome(self)
    }
}
