//! Loading: the checkpoint's files, the prompt encoder, one model replica per device, the
//! batch limits, and the score store with this model's id in it.

use anyhow::Context;
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};
use skyscore_core::ModelFacts;

use super::memo::{Memo, ScoreMemory, StoredModel};
use super::runner::{Replica, Runner};
use super::{
    Engine, EngineError, EngineOptions, ATTENTION_BLOCK_BYTES, DEFAULT_CPU_BATCH_TOKENS, DEFAULT_GPU_BATCH_TOKENS,
};
use crate::batching::BatchLimits;
use crate::checkpoint::Checkpoint;
use crate::encode::PromptEncoder;
use crate::hub::{FileSource, ModelSource};
use crate::models::{Dtype, LinearKind, RewardModel};
use crate::store::{ModelId, ScoreStore};

impl Engine {
    /// Loads `model` (a checkpoint directory or a hub id `owner/name[@revision]`).
    pub fn load(model: &str, opts: &EngineOptions) -> Result<Self, EngineError> {
        if opts.max_length == 0 {
            return Err(EngineError::Options("max_length must be at least 1".into()));
        }
        if opts.batch_size == 0 {
            return Err(EngineError::Options("batch_size must be at least 1".into()));
        }
        if opts.devices.0.is_empty() {
            return Err(EngineError::Options("no device given".into()));
        }
        let max_tokens = opts.max_batch_tokens.unwrap_or(if opts.on_gpu() {
            DEFAULT_GPU_BATCH_TOKENS
        } else {
            DEFAULT_CPU_BATCH_TOKENS
        });
        if max_tokens == 0 {
            return Err(EngineError::Options("max_batch_tokens must be at least 1".into()));
        }
        let load_error = |e: anyhow::Error| EngineError::Load(e.context(format!("loading model `{model}`")));
        let files = FileSource::new(ModelSource::parse(model).map_err(|e| load_error(e.into()))?);
        let checkpoint = Checkpoint::resolve(model, &files).map_err(|e| load_error(e.into()))?;

        if let Some(positions) = checkpoint.arch.max_positions().filter(|&p| opts.max_length > p) {
            return Err(EngineError::Options(format!(
                "--max-length {} is beyond what `{model}` was trained for (max_position_embeddings {positions}); \
                 scores past it are not meaningful: use --max-length {positions} or less",
                opts.max_length
            )));
        }
        let template = checkpoint.template().map_err(|e| load_error(e.into()))?;
        let special = checkpoint.special_tokens();
        let bos = special.get("bos_token").cloned();
        let encoder =
            PromptEncoder::new(template, &checkpoint.tokenizer_path, bos, opts.max_length, opts.truncation_side)
                .map_err(|e| load_error(e.into()))?;

        let vocab = checkpoint.arch.vocab_size();
        let max_id = encoder.max_token_id();
        if max_id as usize >= vocab {
            return Err(load_error(anyhow::anyhow!(
                "{}: the tokenizer produces ids up to {max_id} but the model's embedding has only {vocab} rows",
                checkpoint.tokenizer_path.display()
            )));
        }
        // transformers pools with config.pad_token_id, else the tokenizer's pad token.
        let pad_token_id =
            checkpoint.config_pad_token_id.or_else(|| special.get("pad_token").and_then(|t| encoder.token_to_id(t)));

        let path = ComputePath::choose(opts);
        // SAFETY (the maps below and the VarBuilder's): the safetensors files are memory-mapped
        // read-only; skyscore never writes them and a checkpoint is not expected to change while
        // it is being scored with.
        let mapped = || -> Result<std::sync::Arc<candle_core::safetensors::MmapedSafetensors>, EngineError> {
            unsafe { candle_core::safetensors::MmapedSafetensors::multi(&checkpoint.weights) }
                .map(std::sync::Arc::new)
                .with_context(|| format!("reading weights of `{model}`"))
                .map_err(EngineError::Load)
        };
        let linear_kind = match path {
            ComputePath::Bf16Kernel => LinearKind::PackedBf16(mapped()?),
            ComputePath::RoundedBf16 => LinearKind::MappedF32 { checkpoint: mapped()?, round_bf16: true },
            ComputePath::Candle if !opts.on_gpu() && opts.dtype == Dtype::F32 => {
                LinearKind::MappedF32 { checkpoint: mapped()?, round_bf16: false }
            }
            ComputePath::Candle => LinearKind::Dense,
        };
        let load_dtype = match path {
            ComputePath::Bf16Kernel | ComputePath::RoundedBf16 => candle_core::DType::F32,
            ComputePath::Candle => opts.dtype.candle(),
        };
        let mut replicas = Vec::with_capacity(opts.devices.0.len());
        for spec in &opts.devices.0 {
            let device = spec.open().map_err(EngineError::Load)?;
            // SAFETY: as for `mapped` above.
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&checkpoint.weights, load_dtype, &device) }
                .with_context(|| format!("reading weights of `{model}`"))
                .map_err(EngineError::Load)?;
            let model_impl = RewardModel::load(&checkpoint.arch, vb, &linear_kind)
                .with_context(|| format!("loading {} weights of `{model}` on {spec}", checkpoint.arch.name()))
                .map_err(EngineError::Load)?;
            replicas.push(Replica { spec: *spec, device, model: model_impl });
        }

        let max_rows = if opts.on_gpu() { usize::MAX } else { opts.batch_size };
        let bytes_per_token = (checkpoint.arch.activation_elements_per_token() * 4) as u64;
        let max_memory = opts.max_memory.filter(|_| !opts.on_gpu());
        let max_tokens = match max_memory {
            Some(limit) => {
                max_tokens.min((limit.saturating_sub(ATTENTION_BLOCK_BYTES) / bytes_per_token).max(1) as usize)
            }
            None => max_tokens,
        };
        let facts = model_facts(&checkpoint, encoder.template().sha256(), opts);
        let memory = match &opts.store {
            Some(file) => open_store(file, opts, &facts, &checkpoint, path).map_err(EngineError::Load)?,
            None => None,
        };
        tracing::info!(
            model,
            arch = checkpoint.arch.name(),
            dtype = %opts.dtype,
            path = path.describe(),
            devices = %opts.devices,
            max_batch_tokens = max_tokens,
            chunk_rows = opts.chunk_rows(),
            pad_token_id,
            template_sha256 = encoder.template().sha256(),
            store = ?opts.store,
            "model loaded"
        );
        let runner =
            Runner { replicas, pad_token_id, limits: BatchLimits { max_rows, max_tokens }, stop: opts.stop.clone() };
        Ok(Self {
            checkpoint,
            encoder,
            runner,
            memo: Memo::new(memory),
            facts,
            bytes_per_token,
            max_memory,
            chunk_rows: opts.chunk_rows(),
        })
    }
}

/// Opens the score store and names this model in it: everything a score depends on (the
/// facts, the device kind, since GPU kernels and the bf16 kernel round differently, and the
/// files). `None` when another program holds the store (the run goes on without it, and says so).
fn open_store(
    path: &std::path::Path,
    opts: &EngineOptions,
    facts: &ModelFacts,
    checkpoint: &Checkpoint,
    compute: ComputePath,
) -> anyhow::Result<Option<Box<dyn ScoreMemory>>> {
    let Some(store) = ScoreStore::open(path, opts.store_wait)? else {
        tracing::warn!(
            "the score store {} is held by another program; running without it (scores of this run are not kept)",
            path.display()
        );
        return Ok(None);
    };
    // Paths that round differently keep their scores apart (the names of existing stores'
    // paths are kept: "cuda", "cpu-bf16-kernel", "cpu").
    let kind = match (opts.on_gpu(), compute) {
        (true, _) => "cuda",
        (false, ComputePath::Bf16Kernel) => "cpu-bf16-kernel",
        (false, ComputePath::RoundedBf16) => "cpu-bf16-rounded",
        (false, ComputePath::Candle) => "cpu",
    };
    let description = facts.store_description(kind, &checkpoint.files_sha256);
    let digest = Sha256::digest(description.as_bytes());
    let model: ModelId = digest[..16].try_into().expect("16 bytes");
    store.register_model(&model, &description)?;
    Ok(Some(Box::new(StoredModel { store, model })))
}

/// How the model computes, given the dtype and the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputePath {
    /// candle's ops in the dtype asked for (f32 and f16 on CPU, everything on GPUs, and CPU bf16
    /// when `candle_bf16` asks for it).
    Candle,
    /// CPU bf16 with AVX512-BF16: projections through skyscore's bf16 kernel, the rest f32.
    Bf16Kernel,
    /// CPU bf16 without AVX512-BF16: bf16-rounded weights multiplied in f32.
    RoundedBf16,
}

impl ComputePath {
    pub fn choose(opts: &EngineOptions) -> Self {
        if opts.on_gpu() || opts.dtype != Dtype::Bf16 || opts.candle_bf16 {
            ComputePath::Candle
        } else if crate::models::cpu_bf16_kernel() {
            ComputePath::Bf16Kernel
        } else {
            ComputePath::RoundedBf16
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            ComputePath::Candle => "candle",
            ComputePath::Bf16Kernel => "bf16 kernel (AVX512-BF16)",
            ComputePath::RoundedBf16 => "bf16-rounded weights in f32 (no AVX512-BF16)",
        }
    }
}

/// What a score of `checkpoint` run with `options` depends on besides the conversation.
fn model_facts(checkpoint: &Checkpoint, template_sha256: &str, options: &EngineOptions) -> ModelFacts {
    ModelFacts {
        model: checkpoint.model_id.clone(),
        revision: checkpoint.revision.clone(),
        architecture: checkpoint.arch.name().into(),
        checkpoint_sha256: checkpoint.content_sha256.clone(),
        template_sha256: template_sha256.into(),
        max_length: options.max_length,
        truncation_side: options.truncation_side.as_str().into(),
        dtype: options.dtype.to_string(),
    }
}

/// Bytes of host memory the model's weights take once loaded with `options`, from config.json
/// alone (parameters × the dtype's size; on GPUs the weights live on the card: 0).
pub fn resident_weight_bytes(model: &str, options: &EngineOptions) -> anyhow::Result<u64> {
    if options.on_gpu() {
        return Ok(0);
    }
    let files = FileSource::new(ModelSource::parse(model)?);
    let checkpoint = Checkpoint::describe(model, &files).with_context(|| format!("reading model `{model}`"))?;
    // 4 bytes whatever the dtype: f32 weights, and the CPU's bf16-rounded path keeps f32 copies
    // too (the AVX512-BF16 kernel packs 2 bytes; counting 4 errs on the safe side).
    const BYTES_PER_PARAMETER: u64 = 4;
    Ok(checkpoint.arch.parameter_count() * BYTES_PER_PARAMETER * options.devices.0.len() as u64)
}

/// The [`ModelFacts`] of `model` run with `options`, from its small files only (a hub model's
/// weights are not downloaded): what a cluster client expects of the executors.
pub fn describe_model(model: &str, options: &EngineOptions) -> anyhow::Result<ModelFacts> {
    let files = FileSource::new(ModelSource::parse(model)?);
    let checkpoint = Checkpoint::describe(model, &files).with_context(|| format!("reading model `{model}`"))?;
    let template = checkpoint.template().with_context(|| format!("reading model `{model}`"))?;
    Ok(model_facts(&checkpoint, template.sha256(), options))
}
