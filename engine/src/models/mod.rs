//! The reward models. One file per architecture, each with its config struct and a plain
//! forward; `layers` holds the blocks they share; `cpu` the CPU kernels (the AVX512-BF16
//! projections of `--dtype bf16`, fused f32 elementwise passes) and every architecture `cfg`.

pub mod cpu;
pub mod layers;
pub mod llama;
pub mod qwen3;
mod validate;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value as Json;

pub use layers::{pooled_index, LinearKind};
use llama::{LlamaConfig, LlamaForSequenceClassification};
use qwen3::{Qwen3Config, Qwen3ForSequenceClassification};

const LLAMA: &str = "LlamaForSequenceClassification";
const QWEN3: &str = "Qwen3ForSequenceClassification";

/// The `architectures` entries this build can run.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[LLAMA, QWEN3];

/// Why a config.json does not describe a model this build can run.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("unsupported architecture {found:?}; supported: {}", SUPPORTED_ARCHITECTURES.join(", "))]
    Unsupported { found: Vec<String> },
    #[error("num_labels is {0}; a reward model has exactly one label")]
    NumLabels(usize),
    #[error(transparent)]
    Invalid(#[from] serde_json::Error),
    /// A number the forward pass uses is out of range or disagrees with another.
    #[error("`{field}` {reason}")]
    Field { field: &'static str, reason: String },
    #[error("`{field}` {reason}")]
    TokenId { field: &'static str, reason: String },
}

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
    /// Reads the architecture from a parsed config.json: the first `architectures` entry picks
    /// the config struct, and a reward model must have exactly one label.
    pub fn from_config(config: &Json) -> std::result::Result<Self, ArchError> {
        let archs: Vec<String> = config
            .get("architectures")
            .and_then(Json::as_array)
            .map(|a| a.iter().filter_map(Json::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let arch = match archs.first().map(String::as_str) {
            Some(LLAMA) => ArchConfig::Llama(serde_json::from_value(config.clone())?),
            Some(QWEN3) => ArchConfig::Qwen3(serde_json::from_value(config.clone())?),
            _ => return Err(ArchError::Unsupported { found: archs }),
        };
        // transformers: num_labels is len(id2label) when present, else `num_labels`, else 2.
        let num_labels =
            match (config.get("id2label").and_then(Json::as_object), config.get("num_labels").and_then(Json::as_u64)) {
                (Some(map), _) => map.len(),
                (None, Some(n)) => n as usize,
                (None, None) => 2,
            };
        if num_labels != 1 {
            return Err(ArchError::NumLabels(num_labels));
        }
        arch.shape().validate()?;
        validate::validate_token_ids(config, arch.vocab_size())?;
        Ok(arch)
    }

    /// The numbers the forward pass uses, for [`validate::DecoderShape::validate`].
    fn shape(&self) -> validate::DecoderShape<'_> {
        macro_rules! shape {
            ($c:expr) => {
                validate::DecoderShape {
                    vocab_size: $c.vocab_size,
                    hidden_size: $c.hidden_size,
                    intermediate_size: $c.intermediate_size,
                    num_hidden_layers: $c.num_hidden_layers,
                    num_attention_heads: $c.num_attention_heads,
                    num_key_value_heads: $c.num_key_value_heads,
                    head_dim: $c.head_dim,
                    rms_norm_eps: $c.rms_norm_eps,
                    max_position_embeddings: $c.max_position_embeddings,
                    rope_theta: $c.rope_theta,
                    rope_scaling: $c.rope_scaling.as_ref(),
                    rope_parameters: $c.rope_parameters.as_ref(),
                }
            };
        }
        match self {
            ArchConfig::Llama(c) => shape!(c),
            ArchConfig::Qwen3(c) => shape!(c),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ArchConfig::Llama(_) => LLAMA,
            ArchConfig::Qwen3(_) => QWEN3,
        }
    }

    /// Parameters of the decoder and its embedding (norms and the one-row score head are
    /// negligible): what the weights cost in memory.
    pub fn parameter_count(&self) -> u64 {
        let s = self.shape();
        let (h, i, layers) = (s.hidden_size as u64, s.intermediate_size as u64, s.num_hidden_layers as u64);
        let heads = s.num_attention_heads as u64;
        let kv = s.num_key_value_heads.unwrap_or(s.num_attention_heads) as u64;
        let head_dim = s.head_dim.map_or(h / heads.max(1), |d| d as u64);
        let attention = h * heads * head_dim * 2 + h * kv * head_dim * 2;
        s.vocab_size as u64 * h + layers * (attention + 3 * h * i)
    }

    /// `max_position_embeddings`, when config.json gives it.
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            ArchConfig::Llama(c) => c.max_position_embeddings,
            ArchConfig::Qwen3(c) => c.max_position_embeddings,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ArchConfig::Llama(c) => c.vocab_size,
            ArchConfig::Qwen3(c) => c.vocab_size,
        }
    }

    /// Working memory of the forward pass per token of a batch, in elements: the hidden states
    /// one layer holds at once (residual, normed input, q/k/v, attention output: ~8 × hidden)
    /// and the MLP's gate, up and product (3 × intermediate). Layers run one after another,
    /// so this does not grow with depth; attention scores are bounded separately.
    pub fn activation_elements_per_token(&self) -> usize {
        let (hidden, intermediate) = match self {
            ArchConfig::Llama(c) => (c.hidden_size, c.intermediate_size),
            ArchConfig::Qwen3(c) => (c.hidden_size, c.intermediate_size),
        };
        8 * hidden + 3 * intermediate
    }
}

/// Whether this CPU has the bf16 kernel (AVX512-BF16): `--dtype bf16` on CPU then runs the
/// linear layers in bf16 and the rest in f32, instead of candle's all-bf16 path.
pub fn cpu_bf16_kernel() -> bool {
    cpu::bf16_kernel_available()
}

impl RewardModel {
    pub fn load(config: &ArchConfig, vb: VarBuilder, kind: &LinearKind) -> Result<Self> {
        Ok(match config {
            ArchConfig::Llama(c) => RewardModel::Llama(LlamaForSequenceClassification::load(c, vb, kind)?),
            ArchConfig::Qwen3(c) => RewardModel::Qwen3(Qwen3ForSequenceClassification::load(c, vb, kind)?),
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

/// Weight and compute precision, parsed once from a flag or the YAML config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(name: &str) -> std::result::Result<Self, String> {
        match name {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" | "half" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            _ => Err(format!("unknown dtype `{name}` (f32, f16, bf16)")),
        }
    }
}

impl TryFrom<String> for Dtype {
    type Error = String;
    fn try_from(name: String) -> std::result::Result<Self, String> {
        name.parse()
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        })
    }
}

impl Dtype {
    /// f32 on CPU (exact), bf16 on GPUs (what the cards are fast at).
    pub fn default_for(on_gpu: bool) -> Self {
        if on_gpu {
            Dtype::Bf16
        } else {
            Dtype::F32
        }
    }

    pub fn candle(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::Bf16 => DType::BF16,
        }
    }
}

/// `--dtype` as the user gives it: a dtype, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum DtypeChoice {
    /// The fastest dtype whose scores stay within bf16 noise of f32 on this machine.
    Auto,
    Fixed(Dtype),
}

impl std::str::FromStr for DtypeChoice {
    type Err = String;
    fn from_str(name: &str) -> std::result::Result<Self, String> {
        match name {
            "auto" => Ok(DtypeChoice::Auto),
            other => other.parse().map(DtypeChoice::Fixed).map_err(|e: String| e.replace("(f32", "(auto, f32")),
        }
    }
}

impl TryFrom<String> for DtypeChoice {
    type Error = String;
    fn try_from(name: String) -> std::result::Result<Self, String> {
        name.parse()
    }
}

impl DtypeChoice {
    /// The dtype to run, and for `auto` why. On GPUs bf16 (what the cards are fast at); on a
    /// CPU with AVX512-BF16, bf16 through skyscore's kernel (about 2× f32's speed); on other
    /// CPUs f32 (bf16 runs there at f32's speed, so it would only add rounding).
    pub fn resolve(self, on_gpu: bool) -> (Dtype, Option<String>) {
        match self {
            DtypeChoice::Fixed(dtype) => (dtype, None),
            DtypeChoice::Auto if on_gpu => (Dtype::Bf16, Some("auto: bf16 on a GPU".into())),
            DtypeChoice::Auto if cpu_bf16_kernel() => (
                Dtype::Bf16,
                Some("auto: bf16, this CPU has AVX512-BF16 (skyscore's bf16 kernel, about 2× f32)".into()),
            ),
            DtypeChoice::Auto => (
                Dtype::F32,
                Some(
                    "auto: f32, this CPU has no AVX512-BF16 (bf16 would run at f32's speed with more rounding)".into(),
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_parse_by_short_and_torch_names() {
        assert_eq!("bfloat16".parse::<Dtype>().unwrap(), Dtype::Bf16);
        assert_eq!("f32".parse::<Dtype>().unwrap().to_string(), "f32");
        assert_eq!("f8".parse::<Dtype>().unwrap_err(), "unknown dtype `f8` (f32, f16, bf16)");
    }

    #[test]
    fn architectures_dispatch_and_reward_heads_have_one_label() {
        let err = ArchConfig::from_config(&serde_json::json!({"architectures": ["GPT2Model"]})).unwrap_err();
        assert!(err.to_string().contains("LlamaForSequenceClassification, Qwen3ForSequenceClassification"));
        let err = ArchConfig::from_config(&serde_json::json!({"architectures": [LLAMA]})).unwrap_err();
        assert!(matches!(err, ArchError::Invalid(_)), "missing sizes: {err}");
    }
}
