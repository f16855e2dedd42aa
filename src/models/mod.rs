//! The reward models. One file per architecture, each with its config struct and a plain
//! forward; `layers` holds the blocks they share.

pub mod layers;
pub mod llama;
pub mod qwen3;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

pub use layers::pooled_index;
use llama::{LlamaConfig, LlamaForSequenceClassification};
use qwen3::{Qwen3Config, Qwen3ForSequenceClassification};

/// The `architectures` entries this build can run.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["LlamaForSequenceClassification", "Qwen3ForSequenceClassification"];

/// A batch as the model consumes it. Today rows are right-padded to a common length
/// (`input_ids: [batch, seq]`); a packed, padding-free layout would add cumulative sequence
/// offsets here and leave the callers unchanged.
#[derive(Debug)]
pub struct ModelBatch {
    pub input_ids: Tensor,
    /// Per row, the position whose hidden state is scored.
    pub pooled: Vec<usize>,
}

impl ModelBatch {
    /// Right-pads `rows` with `pad_id` and computes each row's pooled position the way
    /// transformers does (rightmost token that is not `pad_token_id`).
    pub fn padded(rows: &[&[u32]], pad_token_id: Option<u32>, device: &Device) -> Result<Self> {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let fill = pad_token_id.unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * t);
        let mut pooled = Vec::with_capacity(rows.len());
        for row in rows {
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(fill, t - row.len()));
            pooled.push(pooled_index(row, pad_token_id));
        }
        let input_ids = Tensor::from_vec(ids, (rows.len(), t), device)?;
        Ok(Self { input_ids, pooled })
    }

    /// Tokens the model computes for this batch, padding included.
    pub fn padded_tokens(&self) -> usize {
        self.input_ids.elem_count()
    }
}

/// A loaded sequence-classification reward model.
#[derive(Debug, Clone)]
pub enum RewardModel {
    Llama(LlamaForSequenceClassification),
    Qwen3(Qwen3ForSequenceClassification),
}

/// What config.json says about the architecture, parsed and checked.
#[derive(Debug, Clone)]
pub enum ArchConfig {
    Llama(LlamaConfig),
    Qwen3(Qwen3Config),
}

impl ArchConfig {
    pub fn name(&self) -> &'static str {
        match self {
            ArchConfig::Llama(_) => "LlamaForSequenceClassification",
            ArchConfig::Qwen3(_) => "Qwen3ForSequenceClassification",
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ArchConfig::Llama(c) => c.vocab_size,
            ArchConfig::Qwen3(c) => c.vocab_size,
        }
    }
}

impl RewardModel {
    pub fn load(config: &ArchConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match config {
            ArchConfig::Llama(c) => RewardModel::Llama(LlamaForSequenceClassification::load(c, vb)?),
            ArchConfig::Qwen3(c) => RewardModel::Qwen3(Qwen3ForSequenceClassification::load(c, vb)?),
        })
    }

    /// Raw score logits `[batch]` in f32.
    pub fn forward(&self, batch: &ModelBatch) -> Result<Tensor> {
        match self {
            RewardModel::Llama(m) => m.forward(batch),
            RewardModel::Qwen3(m) => m.forward(batch),
        }
    }
}

/// Parses a dtype name as used on the command line and in config.json.
pub fn parse_dtype(name: &str) -> Option<DType> {
    match name {
        "f32" | "float32" => Some(DType::F32),
        "f16" | "float16" | "half" => Some(DType::F16),
        "bf16" | "bfloat16" => Some(DType::BF16),
        _ => None,
    }
}
