//! The scoring engine: a loaded checkpoint (prompt encoder + one model replica per device) and
//! the one path from conversations to scores. Chunks of conversations are tokenized on their own
//! thread (rayon inside) while the device works through the previous chunk; each chunk is cut
//! into length-sorted, token-budgeted batches. With several devices each replica pulls the next
//! batch when it is free, so faster or less loaded devices take more batches.
//!
//! Before tokenizing, a chunk's rows are deduplicated and looked up in the persistent score store
//! ([`crate::store`]); only conversations never scored with this model reach the device, and each
//! device batch's scores are committed to the store as soon as it finishes.
//!
//! Front ends adapt to [`Engine::score_chunks`]: `skyscore score` with windows of its input
//! table, the SQL service through [`Scorer`] with the rows of one merged request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_nn::VarBuilder;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use skyscore_core::{
    conversation_key, ChatTurn, Conversation, ConversationKey, RowResult, RowScore, ScoreStats, Scored, Scorer,
    ScorerError,
};

use crate::batching::{plan_batches, BatchLimits};
use crate::checkpoint::Checkpoint;
use crate::device::{is_out_of_memory, DeviceList, DeviceSpec};
use crate::encode::{Encoded, PromptEncoder, TruncationSide};
use crate::hub::{FileSource, ModelSource};
use crate::models::{Dtype, LinearKind, ModelBatch, RewardModel};
use crate::store::{ModelId, ScoreStore};

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

/// A unit of rows the engine tokenizes and scores together (a window of an input table, a slice
/// of a SQL request). The engine asks for its conversations on the tokenizing thread.
pub trait ConversationChunk: Send {
    /// One entry per row, in row order: its conversation, or why the caller could not build one
    /// (a NULL column, say). Such rows come back as row errors, untouched by the model.
    fn conversations(&self) -> Vec<Result<Conversation<'_>, String>>;
}

/// The model loaded on one device.
struct Replica {
    spec: DeviceSpec,
    device: Device,
    model: RewardModel,
}

/// What one device batch produced: scores in batch-row order and its figures.
type BatchOutput = (Vec<f32>, ScoreStats);

/// Where a row of a chunk gets its result.
#[derive(Debug, Clone)]
enum Slot {
    /// The caller or the tokenizer refused it.
    Failed(String),
    /// Found in the score store.
    Stored(RowScore),
    /// The k-th distinct conversation the model runs (duplicates share it).
    Todo(usize),
}

/// A chunk ready for the device: what each row needs, and the distinct conversations to score.
struct PreparedChunk<C> {
    chunk: C,
    slots: Vec<Slot>,
    todo_keys: Vec<ConversationKey>,
    todo: Vec<Result<Encoded, String>>,
    stats: ScoreStats,
}

/// The store and this model's name in it.
struct StoreHandle {
    store: ScoreStore,
    model: ModelId,
}
pub struct Engine {
    checkpoint: Checkpoint,
    replicas: Vec<Replica>,
    encoder: PromptEncoder,
    pad_token_id: Option<u32>,
    limits: BatchLimits,
    options: EngineOptions,
    store: Option<StoreHandle>,
    /// Estimated activation bytes per token of a batch (f32), for the memory limit.
    bytes_per_token: u64,
    /// Scores this engine has committed to the store (what a rerun will not compute again).
    committed_rows: AtomicUsize,
    /// The projections run through the bf16 kernel (which rounds differently from candle's bf16).
    packed_bf16: bool,
}

/// Attention scores computed at once are bounded by the blocked attention (64M f32 scores).
const ATTENTION_BLOCK_BYTES: u64 = 256 << 20;

impl Engine {
    /// Loads `model` (a checkpoint directory or a hub id `owner/name[@revision]`).
    pub fn load(model: &str, opts: &EngineOptions) -> Result<Self> {
        if opts.max_length == 0 {
            bail!("max_length must be at least 1");
        }
        if opts.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        if opts.devices.0.is_empty() {
            bail!("no device given");
        }
        let max_tokens = opts.max_batch_tokens.unwrap_or(if opts.on_gpu() {
            DEFAULT_GPU_BATCH_TOKENS
        } else {
            DEFAULT_CPU_BATCH_TOKENS
        });
        if max_tokens == 0 {
            bail!("max_batch_tokens must be at least 1");
        }
        let files = FileSource::new(ModelSource::parse(model)?);
        let checkpoint = Checkpoint::resolve(model, &files).with_context(|| format!("loading model `{model}`"))?;

        if let Some(positions) = checkpoint.arch.max_positions().filter(|&p| opts.max_length > p) {
            bail!(
                "--max-length {} is beyond what `{model}` was trained for (max_position_embeddings {positions}); \
                 scores past it are not meaningful: use --max-length {positions} or less",
                opts.max_length
            );
        }
        let template = checkpoint.template().with_context(|| format!("loading model `{model}`"))?;
        let special = checkpoint.special_tokens();
        let bos = special.get("bos_token").cloned();
        let encoder =
            PromptEncoder::new(template, &checkpoint.tokenizer_path, bos, opts.max_length, opts.truncation_side)?;

        let vocab = checkpoint.arch.vocab_size();
        let max_id = encoder.max_token_id();
        if max_id as usize >= vocab {
            bail!(
                "{}: the tokenizer produces ids up to {max_id} but the model's embedding has only {vocab} rows",
                checkpoint.tokenizer_path.display()
            );
        }
        // transformers pools with config.pad_token_id, else the tokenizer's pad token.
        let pad_token_id =
            checkpoint.config_pad_token_id.or_else(|| special.get("pad_token").and_then(|t| encoder.token_to_id(t)));

        // bf16 on a CPU with AVX512-BF16: the linear layers run through skyscore's bf16 kernel,
        // everything else in f32 (candle's CPU bf16 widens every product to f32 and is slower
        // than f32). Elsewhere candle runs the whole model in the dtype asked for.
        let packed_bf16 = !opts.on_gpu() && opts.dtype == Dtype::Bf16 && crate::models::cpu_bf16_kernel();
        let linear_kind = if packed_bf16 {
            // SAFETY: as for the VarBuilder below: the files are mapped read-only and not changed.
            let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&checkpoint.weights) }
                .with_context(|| format!("reading weights of `{model}`"))?;
            LinearKind::PackedBf16(std::sync::Arc::new(mapped))
        } else {
            LinearKind::Dense
        };
        let load_dtype = if packed_bf16 { candle_core::DType::F32 } else { opts.dtype.candle() };
        let mut replicas = Vec::with_capacity(opts.devices.0.len());
        for spec in &opts.devices.0 {
            let device = spec.open()?;
            // SAFETY: the safetensors files are memory-mapped read-only; skyscore never writes them
            // and a checkpoint is not expected to change while it is being scored with.
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&checkpoint.weights, load_dtype, &device) }
                .with_context(|| format!("reading weights of `{model}`"))?;
            let model_impl = RewardModel::load(&checkpoint.arch, vb, &linear_kind)
                .with_context(|| format!("loading {} weights of `{model}` on {spec}", checkpoint.arch.name()))?;
            replicas.push(Replica { spec: *spec, device, model: model_impl });
        }

        let max_rows = if opts.on_gpu() { usize::MAX } else { opts.batch_size };
        let bytes_per_token = (checkpoint.arch.activation_elements_per_token() * 4) as u64;
        let max_tokens = match opts.max_memory.filter(|_| !opts.on_gpu()) {
            Some(limit) => {
                max_tokens.min((limit.saturating_sub(ATTENTION_BLOCK_BYTES) / bytes_per_token).max(1) as usize)
            }
            None => max_tokens,
        };
        let mut engine = Self {
            checkpoint,
            replicas,
            encoder,
            pad_token_id,
            limits: BatchLimits { max_rows, max_tokens },
            options: opts.clone(),
            store: None,
            bytes_per_token,
            committed_rows: AtomicUsize::new(0),
            packed_bf16,
        };
        if let Some(path) = &opts.store {
            engine.store = engine.open_store(path)?;
        }
        let (checkpoint, encoder) = (&engine.checkpoint, &engine.encoder);
        tracing::info!(
            model,
            arch = checkpoint.arch.name(),
            dtype = %opts.dtype,
            linear = if packed_bf16 { "bf16 kernel" } else { "candle" },
            devices = %opts.devices,
            max_batch_tokens = max_tokens,
            chunk_rows = opts.chunk_rows(),
            pad_token_id,
            template_sha256 = encoder.template().sha256(),
            store = ?opts.store,
            "model loaded"
        );
        Ok(engine)
    }

    /// Opens the score store and names this model in it: everything a score depends on (the
    /// fingerprint, the device kind, since GPU kernels round differently, and the files).
    fn open_store(&self, path: &std::path::Path) -> Result<Option<StoreHandle>> {
        let Some(store) = ScoreStore::open(path, self.options.store_wait)? else {
            tracing::warn!(
                "the score store {} is held by another program; running without it (scores of this run are not kept)",
                path.display()
            );
            return Ok(None);
        };
        let kind = match (self.options.on_gpu(), self.packed_bf16) {
            (true, _) => "cuda",
            (false, true) => "cpu-bf16-kernel",
            (false, false) => "cpu",
        };
        let description = format!(
            "{};skyscore.device={kind};skyscore.files_sha256={}",
            self.fingerprint(),
            self.checkpoint.files_sha256
        );
        let digest = Sha256::digest(description.as_bytes());
        let model: ModelId = digest[..16].try_into().expect("16 bytes");
        store.register_model(&model, &description)?;
        Ok(Some(StoreHandle { store, model }))
    }

    /// Scores committed to the store by this engine so far.
    pub fn committed_rows(&self) -> usize {
        self.committed_rows.load(Ordering::Relaxed)
    }

    /// The score store this engine reads and writes, if any.
    pub fn store_path(&self) -> Option<&std::path::Path> {
        self.store.as_ref().map(|s| s.store.path())
    }

    pub fn encoder(&self) -> &PromptEncoder {
        &self.encoder
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Scores a stream of chunks: the next chunk is tokenized on its own thread while this one
    /// runs through the model, and `on_scored` gets each chunk back with one result per row, in
    /// order. `on_batch(rows, tokens)` follows the device batches (progress bars). The first
    /// error of `chunks`, of the model or of `on_scored` ends the stream.
    pub fn score_chunks<C: ConversationChunk>(
        &self,
        chunks: impl Iterator<Item = Result<C>> + Send,
        on_batch: &(dyn Fn(usize, usize) + Sync),
        mut on_scored: impl FnMut(C, Scored) -> Result<()>,
    ) -> Result<()> {
        // One chunk waits while one is scored: memory stays bounded by two chunks.
        let (tx, rx) = mpsc::sync_channel::<Result<PreparedChunk<C>>>(1);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for chunk in chunks {
                    let item = chunk.and_then(|c| self.prepare_chunk(c));
                    let failed = item.is_err();
                    if tx.send(item).is_err() || failed {
                        break;
                    }
                }
            });
            for item in rx {
                let prepared = item?;
                crate::interrupt::check()?;
                // This chunk was looked up while the previous one was still scoring: rows it
                // shares with that one are in the store now.
                let known = match &self.store {
                    Some(s) => s.store.get_many(&s.model, &prepared.todo_keys).context("reading the score store")?,
                    None => vec![None; prepared.todo_keys.len()],
                };
                let todo_results = self.score_todo(&prepared.todo, &prepared.todo_keys, &known, on_batch)?;
                let mut stats = prepared.stats;
                stats += todo_results.stats;
                stats.store_hits += known.iter().filter(|k| k.is_some()).count();
                let rows = prepared
                    .slots
                    .into_iter()
                    .map(|slot| match slot {
                        Slot::Failed(reason) => Err(reason),
                        Slot::Stored(row) => Ok(row),
                        Slot::Todo(t) => todo_results.rows[t].clone(),
                    })
                    .collect();
                on_scored(prepared.chunk, Scored { rows, stats })?;
            }
            Ok(())
        })
    }

    /// Deduplicates a chunk's rows, answers what the score store knows, and tokenizes the rest in
    /// parallel (a row that cannot be tokenized carries its reason).
    fn prepare_chunk<C: ConversationChunk>(&self, chunk: C) -> Result<PreparedChunk<C>> {
        let conversations = chunk.conversations();
        let mut stats = ScoreStats::default();
        let mut slots = Vec::with_capacity(conversations.len());
        let mut first_of: HashMap<ConversationKey, usize> = HashMap::new();
        let (mut distinct_rows, mut distinct_keys) = (Vec::new(), Vec::new());
        for (row, conversation) in conversations.iter().enumerate() {
            let conversation = match conversation {
                Ok(c) => c,
                Err(reason) => {
                    slots.push(Slot::Failed(reason.clone()));
                    continue;
                }
            };
            let key = conversation_key(conversation);
            let t = *first_of.entry(key).or_insert(distinct_rows.len());
            if t == distinct_rows.len() {
                distinct_rows.push(row);
                distinct_keys.push(key);
            } else {
                stats.duplicate_rows += 1;
            }
            slots.push(Slot::Todo(t));
        }
        let stored = match &self.store {
            Some(s) => s.store.get_many(&s.model, &distinct_keys).context("reading the score store")?,
            None => vec![None; distinct_keys.len()],
        };
        // A stored conversation counts once as a store hit; its duplicates stay duplicates.
        stats.store_hits = stored.iter().filter(|s| s.is_some()).count();
        // Renumber the conversations still to score; stored ones answer their rows directly.
        let mut renumbered = Vec::with_capacity(distinct_rows.len());
        let (mut todo_rows, mut todo_keys) = (Vec::new(), Vec::new());
        for ((row, key), found) in distinct_rows.iter().zip(&distinct_keys).zip(&stored) {
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
        let todo = todo_rows
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
        Ok(PreparedChunk { chunk, slots, todo_keys, todo, stats })
    }

    /// Refuses a row whose forward pass alone would need more memory than `--max-memory`.
    fn check_memory(&self, tokens: usize) -> Result<(), String> {
        let Some(limit) = self.options.max_memory.filter(|_| !self.options.on_gpu()) else { return Ok(()) };
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

    /// Runs the distinct rows that tokenized through the model, committing each device batch's
    /// scores to the store; row errors pass through, and a non-finite score becomes one (it
    /// would poison every ranking and threshold downstream, and is never stored).
    fn score_todo(
        &self,
        encoded: &[Result<Encoded, String>],
        keys: &[ConversationKey],
        known: &[Option<RowScore>],
        on_batch: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Scored> {
        let valid: Vec<(usize, &Encoded)> = encoded
            .iter()
            .enumerate()
            .filter(|(i, _)| known[*i].is_none())
            .filter_map(|(i, e)| e.as_ref().ok().map(|e| (i, e)))
            .collect();
        let refs: Vec<&Encoded> = valid.iter().map(|(_, e)| *e).collect();
        let row_score = |k: usize, score: f32| {
            let enc = refs[k];
            score.is_finite().then_some(RowScore { score, tokens: enc.ids.len() as u32, truncated: enc.truncated })
        };
        let mut store_failed = false;
        let mut commit = |batch: &[usize], logits: &[f32]| {
            let Some(s) = &self.store else { return };
            let rows: Vec<(ConversationKey, RowScore)> = batch
                .iter()
                .zip(logits)
                .filter_map(|(&k, &score)| row_score(k, score).map(|r| (keys[valid[k].0], r)))
                .collect();
            match s.store.put_many(&s.model, &rows) {
                Ok(()) => {
                    self.committed_rows.fetch_add(rows.len(), Ordering::Relaxed);
                }
                Err(e) if !std::mem::replace(&mut store_failed, true) => tracing::warn!(
                    "cannot write to the score store {}: {e:#}; scores go on without it",
                    s.store.path().display()
                ),
                Err(_) => {}
            }
        };
        let started = Instant::now();
        let (logits, mut stats) = self.score_encoded(&refs, on_batch, &mut commit)?;
        stats.model_s = started.elapsed().as_secs_f64();
        stats.truncated_rows = refs.iter().filter(|e| e.truncated).count();
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

    /// Scores tokenized rows in length-sorted, token-budgeted batches; after each device batch,
    /// `commit(batch rows, their scores)` then `on_batch(rows, tokens)`. Scores come back in the
    /// order of `rows`. A stop request (Ctrl-C) ends it between batches.
    fn score_encoded(
        &self,
        rows: &[&Encoded],
        on_batch: &(dyn Fn(usize, usize) + Sync),
        commit: &mut dyn FnMut(&[usize], &[f32]),
    ) -> Result<BatchOutput> {
        let lengths: Vec<usize> = rows.iter().map(|r| r.ids.len()).collect();
        let plan = plan_batches(&lengths, self.limits);
        let mut scores = vec![0f32; rows.len()];
        let mut stats = ScoreStats::default();
        let mut record = |batch_rows: &[usize], (logits, batch_stats): BatchOutput| {
            for (&row, score) in batch_rows.iter().zip(&logits) {
                scores[row] = *score;
            }
            commit(batch_rows, &logits);
            on_batch(batch_rows.len(), batch_stats.tokens);
            stats += batch_stats;
        };
        if let [replica] = self.replicas.as_slice() {
            for batch_rows in &plan {
                crate::interrupt::check()?;
                record(batch_rows, self.run_batch_or_halves(replica, rows, batch_rows)?);
            }
        } else {
            self.run_on_replicas(rows, &plan, &mut record)?;
        }
        Ok((scores, stats))
    }

    /// [`Self::run_batch`], split in halves when the device runs out of memory.
    fn run_batch_or_halves(&self, replica: &Replica, rows: &[&Encoded], batch_rows: &[usize]) -> Result<BatchOutput> {
        run_splitting_on_oom(batch_rows, &mut |part| self.run_batch(replica, rows, part))
    }

    /// One forward pass: pads the batch's rows, runs the model, brings the f32 scores back.
    fn run_batch(&self, replica: &Replica, rows: &[&Encoded], batch_rows: &[usize]) -> Result<BatchOutput> {
        let ids: Vec<&[u32]> = batch_rows.iter().map(|&i| rows[i].ids.as_slice()).collect();
        let batch = ModelBatch::padded(&ids, self.pad_token_id, &replica.device)?;
        let logits: Vec<f32> = replica.model.forward(&batch).and_then(|t| t.to_vec1()).with_context(|| {
            let (rows, width) = (ids.len(), batch.padded_tokens() / ids.len().max(1));
            let hint = match replica.spec {
                DeviceSpec::Cuda(_) => "; if the card ran out of memory, lower --max-batch-tokens",
                DeviceSpec::Cpu => "",
            };
            format!("forward pass on {} ({rows} rows × {width} tokens){hint}", replica.spec)
        })?;
        let stats = ScoreStats {
            model_rows: ids.len(),
            tokens: ids.iter().map(|r| r.len()).sum(),
            padded_tokens: batch.padded_tokens(),
            batches: 1,
            ..Default::default()
        };
        Ok((logits, stats))
    }

    /// Spreads the planned batches over the replicas: each device thread takes the next batch
    /// when it is done with its last, and results are recorded here as they arrive. The first
    /// error stops the others after their current batch.
    fn run_on_replicas(
        &self,
        rows: &[&Encoded],
        plan: &[Vec<usize>],
        record: &mut impl FnMut(&[usize], BatchOutput),
    ) -> Result<()> {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<Result<(usize, BatchOutput)>>();
        std::thread::scope(|scope| {
            for replica in &self.replicas {
                let (tx, next, failed) = (tx.clone(), &next, &failed);
                scope.spawn(move || loop {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Err(e) = crate::interrupt::check() {
                        let _ = tx.send(Err(e.into()));
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= plan.len() {
                        break;
                    }
                    let result = self.run_batch_or_halves(replica, rows, &plan[i]).map(|r| (i, r));
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if tx.send(result).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            let mut first_error = None;
            for message in rx {
                match message {
                    Ok((i, result)) => record(&plan[i], result),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    /// What a score depends on besides the conversation.
    pub fn metadata(&self) -> Vec<(String, String)> {
        let c = &self.checkpoint;
        let mut metadata = vec![
            ("skyscore.version".into(), env!("CARGO_PKG_VERSION").into()),
            ("skyscore.model".into(), c.model_id.clone()),
            ("skyscore.revision".into(), c.revision.clone().unwrap_or_default()),
        ];
        metadata.extend(model_facts(c, self.encoder.template().sha256(), &self.options));
        metadata
    }
}

/// What a score depends on besides the conversation, in terms equal on every machine with the
/// same files (no local paths): architecture, checkpoint files, template, max_length,
/// truncation side, dtype. A cluster client expects its executors to state the same.
pub fn model_facts(checkpoint: &Checkpoint, template_sha256: &str, options: &EngineOptions) -> Vec<(String, String)> {
    vec![
        ("skyscore.architecture".into(), checkpoint.arch.name().into()),
        ("skyscore.checkpoint_sha256".into(), checkpoint.content_sha256.clone()),
        ("skyscore.template_sha256".into(), template_sha256.into()),
        ("skyscore.max_length".into(), options.max_length.to_string()),
        ("skyscore.truncation_side".into(), options.truncation_side.as_str().into()),
        ("skyscore.dtype".into(), options.dtype.to_string()),
    ]
}

/// The [`model_facts`] of `model` run with `options`, from its small files only (a hub model's
/// weights are not downloaded): what a cluster client expects of the executors.
pub fn describe_model(model: &str, options: &EngineOptions) -> Result<Vec<(String, String)>> {
    let files = FileSource::new(ModelSource::parse(model)?);
    let checkpoint = Checkpoint::describe(model, &files).with_context(|| format!("reading model `{model}`"))?;
    let template = checkpoint.template().with_context(|| format!("reading model `{model}`"))?;
    Ok(model_facts(&checkpoint, template.sha256(), options))
}

/// Runs a batch; when the device runs out of memory, runs each half instead (recursively, down
/// to single rows), so a token budget too large for the card slows a long job down instead of
/// ending it. Scores do not depend on batch mates, so the halves give the same scores.
fn run_splitting_on_oom(
    batch_rows: &[usize],
    run: &mut impl FnMut(&[usize]) -> Result<BatchOutput>,
) -> Result<BatchOutput> {
    match run(batch_rows) {
        Err(e) if batch_rows.len() > 1 && is_out_of_memory(&e) => {
            tracing::warn!(
                rows = batch_rows.len(),
                "out of device memory; running the batch in two halves (lower --max-batch-tokens to avoid this)"
            );
            let (left, right) = batch_rows.split_at(batch_rows.len() / 2);
            let (mut logits, mut stats) = run_splitting_on_oom(left, run)?;
            let (more, more_stats) = run_splitting_on_oom(right, run)?;
            logits.extend(more);
            stats += more_stats;
            Ok((logits, stats))
        }
        other => other,
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
        let chunks = conversations.chunks(self.options.chunk_rows()).map(|c| Ok(SliceChunk(c)));
        self.score_chunks(chunks, &|_, _| {}, |_, scored| {
            all.rows.extend(scored.rows);
            all.stats += scored.stats;
            Ok(())
        })
        .map_err(|e| ScorerError::Engine(format!("{e:#}")))?;
        Ok(all)
    }

    fn fingerprint(&self) -> String {
        self.metadata()
            .into_iter()
            .filter(|(k, _)| k != "skyscore.version")
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    fn metadata(&self) -> Vec<(String, String)> {
        Engine::metadata(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in forward pass: out of memory above `limit` rows, else each row's index as its score.
    fn fake_run(limit: usize, calls: &mut Vec<usize>) -> impl FnMut(&[usize]) -> Result<BatchOutput> + '_ {
        move |rows: &[usize]| {
            calls.push(rows.len());
            if rows.len() > limit {
                bail!("forward pass on cuda:0: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")");
            }
            let stats = ScoreStats { model_rows: rows.len(), tokens: rows.len(), batches: 1, ..Default::default() };
            Ok((rows.iter().map(|&r| r as f32).collect(), stats))
        }
    }

    #[test]
    fn out_of_memory_batches_run_in_halves_with_scores_in_place() {
        let rows: Vec<usize> = (10..21).collect();
        let mut calls = Vec::new();
        let (logits, stats) = run_splitting_on_oom(&rows, &mut fake_run(3, &mut calls)).unwrap();
        assert_eq!(logits, rows.iter().map(|&r| r as f32).collect::<Vec<_>>());
        assert_eq!((stats.tokens, stats.batches), (11, 4));
        assert_eq!(calls, [11, 5, 2, 3, 6, 3, 3]);
    }

    #[test]
    fn other_errors_and_single_rows_out_of_memory_are_not_retried() {
        let mut calls = Vec::new();
        let err = run_splitting_on_oom(&[7], &mut fake_run(0, &mut calls)).unwrap_err();
        assert!(is_out_of_memory(&err));
        assert_eq!(calls, [1]);
        let mut broken = |_: &[usize]| -> Result<BatchOutput> { bail!("shape mismatch") };
        let err = run_splitting_on_oom(&[1, 2, 3], &mut broken).unwrap_err();
        assert_eq!(err.to_string(), "shape mismatch");
    }
}
