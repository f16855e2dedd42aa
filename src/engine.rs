//! The scoring engine: a loaded checkpoint (prompt encoder + one model replica per device),
//! turning tokenized rows into scores through length-sorted, token-budgeted batches. With
//! several devices each replica pulls the next batch when it is free, so faster or less loaded
//! devices take more batches.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use skyscore_udf::{Conversation, ScoreRequest, ScoreStats, Scored, Scorer, ScorerError};

use crate::batching::{plan_batches, BatchLimits};
use crate::checkpoint::Checkpoint;
use crate::encode::{Encoded, PromptEncoder, TruncationSide};
use crate::hub::{FileSource, ModelSource};
use crate::models::{parse_dtype, ModelBatch, RewardModel};
use crate::template::ChatTemplate;

/// Where the model runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
        }
    }
}

impl DeviceSpec {
    /// Parses a device list: `cpu`, `cuda`, `cuda:1`, or several joined by commas
    /// (`cuda:0,cuda:1`), one model replica per entry.
    pub fn parse_list(s: &str) -> Result<Vec<DeviceSpec>, String> {
        let devices = s.split(',').map(|d| d.trim().parse()).collect::<Result<Vec<DeviceSpec>, String>>()?;
        let cpus = devices.iter().filter(|d| **d == DeviceSpec::Cpu).count();
        if cpus != 0 && cpus != devices.len() {
            return Err(format!("device list `{s}` mixes cpu and cuda; use one kind"));
        }
        Ok(devices)
    }

    /// The device when none is asked for: the first GPU when this build has CUDA and the
    /// driver sees one (an 8B model on CPU is rarely what a GPU build's user wants), else cpu.
    pub fn default_for_build() -> DeviceSpec {
        if candle_core::utils::cuda_is_available() && Device::new_cuda(0).is_ok() {
            tracing::info!("no device given: using cuda:0");
            DeviceSpec::Cuda(0)
        } else {
            DeviceSpec::Cpu
        }
    }

    /// `cuda:0,cuda:1` for a list.
    pub fn list_to_string(devices: &[DeviceSpec]) -> String {
        devices.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

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
    pub devices: Vec<DeviceSpec>,
    /// `None`: f32 on CPU, bf16 on CUDA.
    pub dtype: Option<String>,
    /// Rows tokenized as one unit when scoring conversations (the SQL path); the next unit is
    /// tokenized while the device works through the current one.
    pub pipeline_chunk_rows: usize,
}

impl EngineOptions {
    /// Whether the model runs on GPUs (bf16, token-budgeted batches, larger windows).
    pub fn on_gpu(&self) -> bool {
        self.devices.iter().any(|d| *d != DeviceSpec::Cpu)
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_length: 4096,
            truncation_side: TruncationSide::Right,
            batch_size: 16,
            max_batch_tokens: None,
            devices: vec![DeviceSpec::Cpu],
            dtype: None,
            pipeline_chunk_rows: 4096,
        }
    }
}

/// Default padded-token budget of one forward pass. On a GPU it is what keeps the card busy
/// (a 1B model needs ~64K tokens per pass); on CPU larger batches only add memory.
pub const DEFAULT_CPU_BATCH_TOKENS: usize = 8192;
pub const DEFAULT_GPU_BATCH_TOKENS: usize = 65536;

/// The model loaded on one device.
struct Replica {
    spec: DeviceSpec,
    device: Device,
    model: RewardModel,
}

/// What one device batch produced: scores in batch-row order and its figures.
#[derive(Debug)]
struct BatchResult {
    logits: Vec<f32>,
    tokens: usize,
    padded_tokens: usize,
}

pub struct Engine {
    checkpoint: Checkpoint,
    replicas: Vec<Replica>,
    encoder: PromptEncoder,
    pad_token_id: Option<u32>,
    dtype: DType,
    limits: BatchLimits,
    options: EngineOptions,
}

impl Engine {
    /// Loads `model` (a checkpoint directory or a hub id `owner/name[@revision]`).
    pub fn load(model: &str, opts: &EngineOptions) -> Result<Self> {
        if opts.max_length == 0 {
            bail!("max_length must be at least 1");
        }
        if opts.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        let files = FileSource::new(ModelSource::parse(model)?);
        let checkpoint = Checkpoint::resolve(model, &files).with_context(|| format!("loading model `{model}`"))?;

        let template_src = checkpoint
            .chat_template
            .as_deref()
            .ok_or(crate::template::TemplateError::Missing)
            .with_context(|| format!("loading model `{model}`"))?;
        let special = checkpoint.special_tokens();
        let bos = special.get("bos_token").cloned();
        let template = ChatTemplate::new(template_src, special.clone())?;
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

        if opts.devices.is_empty() {
            bail!("no device given");
        }
        let on_gpu = opts.on_gpu();
        let dtype = match opts.dtype.as_deref() {
            Some(name) => parse_dtype(name).with_context(|| format!("unknown dtype `{name}` (f32, f16, bf16)"))?,
            None if on_gpu => DType::BF16,
            None => DType::F32,
        };
        let mut replicas = Vec::with_capacity(opts.devices.len());
        for spec in &opts.devices {
            let device = open_device(spec)?;
            // SAFETY: the safetensors files are memory-mapped read-only; skyscore never writes them
            // and a checkpoint is not expected to change while it is being scored with.
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&checkpoint.weights, dtype, &device) }
                .with_context(|| format!("reading weights of `{model}`"))?;
            let model_impl = RewardModel::load(&checkpoint.arch, vb)
                .with_context(|| format!("loading {} weights of `{model}` on {spec}", checkpoint.arch.name()))?;
            replicas.push(Replica { spec: spec.clone(), device, model: model_impl });
        }

        let default_tokens = if on_gpu { DEFAULT_GPU_BATCH_TOKENS } else { DEFAULT_CPU_BATCH_TOKENS };
        let max_tokens = opts.max_batch_tokens.unwrap_or(default_tokens);
        if max_tokens == 0 {
            bail!("max_batch_tokens must be at least 1");
        }
        let max_rows = if on_gpu { usize::MAX } else { opts.batch_size };
        tracing::info!(
            model,
            arch = checkpoint.arch.name(),
            ?dtype,
            devices = %DeviceSpec::list_to_string(&opts.devices),
            max_batch_tokens = max_tokens,
            pad_token_id,
            template_sha256 = encoder.template().sha256(),
            "model loaded"
        );
        Ok(Self {
            checkpoint,
            replicas,
            encoder,
            pad_token_id,
            dtype,
            limits: BatchLimits { max_rows, max_tokens },
            options: opts.clone(),
        })
    }

    pub fn encoder(&self) -> &PromptEncoder {
        &self.encoder
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Scores tokenized rows; `on_batch(rows, tokens)` is called after each device batch.
    /// Scores come back in the order of `rows`, each independent of its batch mates.
    pub fn score_encoded(&self, rows: &[&Encoded], mut on_batch: impl FnMut(usize, usize)) -> Result<Scored> {
        if let Some(i) = rows.iter().position(|r| r.ids.is_empty()) {
            bail!("row {i} has no tokens");
        }
        let lengths: Vec<usize> = rows.iter().map(|r| r.ids.len()).collect();
        let plan = plan_batches(&lengths, self.limits);
        let mut scores = vec![0f32; rows.len()];
        let mut stats =
            ScoreStats { truncated_rows: rows.iter().filter(|r| r.truncated).count(), ..Default::default() };
        let mut record = |batch_rows: &[usize], result: BatchResult| {
            for (&row, score) in batch_rows.iter().zip(&result.logits) {
                scores[row] = *score;
            }
            stats += ScoreStats {
                rows: batch_rows.len(),
                tokens: result.tokens,
                padded_tokens: result.padded_tokens,
                truncated_rows: 0,
                batches: 1,
            };
            on_batch(batch_rows.len(), result.tokens);
        };
        if let [replica] = self.replicas.as_slice() {
            for batch_rows in &plan {
                record(batch_rows, self.run_batch_or_halves(replica, rows, batch_rows)?);
            }
        } else {
            self.run_on_replicas(rows, &plan, &mut record)?;
        }
        Ok(Scored { scores, stats })
    }

    /// [`Self::run_batch`], split in halves when the device runs out of memory.
    fn run_batch_or_halves(&self, replica: &Replica, rows: &[&Encoded], batch_rows: &[usize]) -> Result<BatchResult> {
        run_splitting_on_oom(batch_rows, &mut |part| self.run_batch(replica, rows, part))
    }

    /// One forward pass: pads the batch's rows, runs the model, brings the f32 scores back.
    fn run_batch(&self, replica: &Replica, rows: &[&Encoded], batch_rows: &[usize]) -> Result<BatchResult> {
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
        Ok(BatchResult { logits, tokens: ids.iter().map(|r| r.len()).sum(), padded_tokens: batch.padded_tokens() })
    }

    /// Spreads the planned batches over the replicas: each device thread takes the next batch
    /// when it is done with its last, and results are recorded here as they arrive. The first
    /// error stops the others after their current batch.
    fn run_on_replicas(
        &self,
        rows: &[&Encoded],
        plan: &[Vec<usize>],
        record: &mut impl FnMut(&[usize], BatchResult),
    ) -> Result<()> {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<Result<(usize, BatchResult)>>();
        std::thread::scope(|scope| {
            for replica in &self.replicas {
                let (tx, next, failed) = (tx.clone(), &next, &failed);
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= plan.len() || failed.load(Ordering::Relaxed) {
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

    /// Encodes and scores SFT rows (the whole pipeline, for callers that hold requests).
    pub fn score_requests(&self, rows: &[ScoreRequest<'_>]) -> Result<Vec<f32>> {
        let conversations: Vec<Conversation<'_>> = rows.iter().map(|r| r.conversation()).collect();
        Ok(Scorer::score(self, &conversations)?.scores)
    }

    /// What a score depends on besides the conversation.
    pub fn metadata(&self) -> Vec<(String, String)> {
        let c = &self.checkpoint;
        vec![
            ("skyscore.version".into(), env!("CARGO_PKG_VERSION").into()),
            ("skyscore.model".into(), c.model_id.clone()),
            ("skyscore.revision".into(), c.revision.clone().unwrap_or_default()),
            ("skyscore.architecture".into(), c.arch.name().into()),
            ("skyscore.template_sha256".into(), self.encoder.template().sha256().into()),
            ("skyscore.max_length".into(), self.options.max_length.to_string()),
            ("skyscore.truncation_side".into(), self.options.truncation_side.as_str().into()),
            ("skyscore.dtype".into(), format!("{:?}", self.dtype).to_lowercase()),
        ]
    }
}

/// Runs a batch; when the device runs out of memory, runs each half instead (recursively, down
/// to single rows), so a token budget too large for the card slows a long job down instead of
/// ending it. Scores do not depend on batch mates, so the halves give the same scores.
fn run_splitting_on_oom(
    batch_rows: &[usize],
    run: &mut impl FnMut(&[usize]) -> Result<BatchResult>,
) -> Result<BatchResult> {
    match run(batch_rows) {
        Err(e) if batch_rows.len() > 1 && is_out_of_memory(&e) => {
            tracing::warn!(
                rows = batch_rows.len(),
                "out of device memory; running the batch in two halves (lower --max-batch-tokens to avoid this)"
            );
            let (left, right) = batch_rows.split_at(batch_rows.len() / 2);
            let mut first = run_splitting_on_oom(left, run)?;
            let second = run_splitting_on_oom(right, run)?;
            first.logits.extend(second.logits);
            first.tokens += second.tokens;
            first.padded_tokens += second.padded_tokens;
            Ok(first)
        }
        other => other,
    }
}

/// CUDA driver allocation failures and cuBLAS workspace failures: both leave the context usable.
fn is_out_of_memory(e: &anyhow::Error) -> bool {
    let text = format!("{e:?}");
    text.contains("CUDA_ERROR_OUT_OF_MEMORY") || text.contains("CUBLAS_STATUS_ALLOC_FAILED")
}

fn open_device(spec: &DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) if candle_core::utils::cuda_is_available() => {
            Device::new_cuda(*n).with_context(|| format!("opening {spec}"))
        }
        DeviceSpec::Cuda(_) => {
            bail!("{spec}: this skyscore was built without CUDA (build it with scripts/build-cuda.sh)")
        }
    }
}

impl Scorer for Engine {
    fn score(&self, conversations: &[Conversation<'_>]) -> Result<Scored, ScorerError> {
        let chunk_rows = self.options.pipeline_chunk_rows.max(1);
        let (tx, rx) = mpsc::sync_channel::<Result<Vec<Encoded>, ScorerError>>(1);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for (k, chunk) in conversations.chunks(chunk_rows).enumerate() {
                    let encoded: Result<Vec<Encoded>, ScorerError> = chunk
                        .par_iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let row = k * chunk_rows + i;
                            self.encoder
                                .encode_conversation(c)
                                .map_err(|e| ScorerError::Row { row, reason: e.to_string() })
                        })
                        .collect();
                    let failed = encoded.is_err();
                    if tx.send(encoded).is_err() || failed {
                        break;
                    }
                }
            });
            let mut scored = Scored { scores: Vec::with_capacity(conversations.len()), stats: ScoreStats::default() };
            for encoded in rx {
                let encoded = encoded?;
                let refs: Vec<&Encoded> = encoded.iter().collect();
                let part = self.score_encoded(&refs, |_, _| {}).map_err(|e| ScorerError::Engine(format!("{e:#}")))?;
                scored.scores.extend(part.scores);
                scored.stats += part.stats;
            }
            Ok(scored)
        })
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
    fn fake_run(limit: usize, calls: &mut Vec<usize>) -> impl FnMut(&[usize]) -> Result<BatchResult> + '_ {
        move |rows: &[usize]| {
            calls.push(rows.len());
            if rows.len() > limit {
                bail!("forward pass on cuda:0: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")");
            }
            Ok(BatchResult { logits: rows.iter().map(|&r| r as f32).collect(), tokens: rows.len(), padded_tokens: 2 })
        }
    }

    #[test]
    fn out_of_memory_batches_run_in_halves_with_scores_in_place() {
        let rows: Vec<usize> = (10..21).collect();
        let mut calls = Vec::new();
        let result = run_splitting_on_oom(&rows, &mut fake_run(3, &mut calls)).unwrap();
        assert_eq!(result.logits, rows.iter().map(|&r| r as f32).collect::<Vec<_>>());
        assert_eq!(result.tokens, 11);
        assert_eq!(calls, [11, 5, 2, 3, 6, 3, 3]);
    }

    #[test]
    fn other_errors_and_single_rows_out_of_memory_are_not_retried() {
        let mut calls = Vec::new();
        let err = run_splitting_on_oom(&[7], &mut fake_run(0, &mut calls)).unwrap_err();
        assert!(is_out_of_memory(&err));
        assert_eq!(calls, [1]);
        let mut broken = |_: &[usize]| -> Result<BatchResult> { bail!("shape mismatch") };
        let err = run_splitting_on_oom(&[1, 2, 3], &mut broken).unwrap_err();
        assert_eq!(err.to_string(), "shape mismatch");
    }
}
