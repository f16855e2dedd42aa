//! The scoring engine: a loaded checkpoint (model + prompt encoder) on one device, turning
//! tokenized rows into scores through length-sorted, token-budgeted batches.

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
    pub batch_size: usize,
    /// Padded tokens per device batch; `None` picks a default for the device.
    pub max_batch_tokens: Option<usize>,
    pub device: DeviceSpec,
    /// `None`: f32 on CPU, bf16 on CUDA.
    pub dtype: Option<String>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_length: 4096,
            truncation_side: TruncationSide::Right,
            batch_size: 16,
            max_batch_tokens: None,
            device: DeviceSpec::Cpu,
            dtype: None,
        }
    }
}

pub struct Engine {
    checkpoint: Checkpoint,
    model: RewardModel,
    encoder: PromptEncoder,
    pad_token_id: Option<u32>,
    device: Device,
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

        let device = match opts.device {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(n) => Device::new_cuda(n).with_context(|| format!("opening cuda:{n}"))?,
        };
        let dtype = match opts.dtype.as_deref() {
            Some(name) => parse_dtype(name).with_context(|| format!("unknown dtype `{name}` (f32, f16, bf16)"))?,
            None if device.is_cpu() => DType::F32,
            None => DType::BF16,
        };
        // SAFETY: the safetensors files are memory-mapped read-only; skyscore never writes them
        // and a checkpoint is not expected to change while it is being scored with.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&checkpoint.weights, dtype, &device) }
            .with_context(|| format!("reading weights of `{model}`"))?;
        let model_impl = RewardModel::load(&checkpoint.arch, vb)
            .with_context(|| format!("loading {} weights of `{model}`", checkpoint.arch.name()))?;

        let max_tokens = opts.max_batch_tokens.unwrap_or(if device.is_cpu() { 8192 } else { 65536 });
        tracing::info!(
            model,
            arch = checkpoint.arch.name(),
            ?dtype,
            device = %opts.device,
            pad_token_id,
            template_sha256 = encoder.template().sha256(),
            "model loaded"
        );
        Ok(Self {
            checkpoint,
            model: model_impl,
            encoder,
            pad_token_id,
            device,
            dtype,
            limits: BatchLimits { max_rows: opts.batch_size, max_tokens },
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
        let lengths: Vec<usize> = rows.iter().map(|r| r.ids.len()).collect();
        if let Some(i) = lengths.iter().position(|&l| l == 0) {
            bail!("row {i} has no tokens");
        }
        let mut scores = vec![0f32; rows.len()];
        let mut stats =
            ScoreStats { truncated_rows: rows.iter().filter(|r| r.truncated).count(), ..Default::default() };
        for batch_rows in plan_batches(&lengths, self.limits) {
            let ids: Vec<&[u32]> = batch_rows.iter().map(|&i| rows[i].ids.as_slice()).collect();
            let batch = ModelBatch::padded(&ids, self.pad_token_id, &self.device)?;
            let logits: Vec<f32> = self.model.forward(&batch)?.to_vec1()?;
            let tokens: usize = ids.iter().map(|r| r.len()).sum();
            stats += ScoreStats {
                rows: ids.len(),
                tokens,
                padded_tokens: batch.padded_tokens(),
                truncated_rows: 0,
                batches: 1,
            };
            for (&row, score) in batch_rows.iter().zip(logits) {
                scores[row] = score;
            }
            on_batch(ids.len(), tokens);
        }
        Ok(Scored { scores, stats })
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

impl Scorer for Engine {
    fn score(&self, conversations: &[Conversation<'_>]) -> Result<Scored, ScorerError> {
        let encoded: Vec<Encoded> = conversations
            .par_iter()
            .enumerate()
            .map(|(row, c)| {
                self.encoder.encode_conversation(c).map_err(|e| ScorerError::Row { row, reason: e.to_string() })
            })
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Encoded> = encoded.iter().collect();
        self.score_encoded(&refs, |_, _| {}).map_err(|e| ScorerError::Engine(format!("{e:#}")))
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
