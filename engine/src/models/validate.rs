//! config.json is a claim made by whoever published the checkpoint. Every number the forward
//! pass uses is checked here, against the others and against generous bounds, before anything is
//! allocated: a zero head count would divide by zero, a head count that does not divide the
//! hidden size would mis-shape every projection, a huge size would ask for terabytes. The
//! safetensors shapes are then checked against these numbers tensor by tensor when the weights
//! load (candle refuses a tensor whose shape differs, naming it).

use super::layers::RopeParameters;
use super::ArchError;

/// Bounds far above every Skywork-Reward-V2 model (the 8B: hidden 4096, intermediate 14336,
/// vocab 128256, 32 layers, 32 heads, 131072 positions) and far below what would overflow.
const MAX_HIDDEN: usize = 1 << 16;
const MAX_INTERMEDIATE: usize = 1 << 18;
const MAX_VOCAB: usize = 1 << 24;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_HEAD_DIM: usize = 4096;
const MAX_POSITIONS: usize = 1 << 24;

/// The numbers both architectures share, as config.json gives them.
pub struct DecoderShape<'a> {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: Option<usize>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<&'a RopeParameters>,
    pub rope_parameters: Option<&'a RopeParameters>,
}

fn field(name: &'static str, reason: impl Into<String>) -> ArchError {
    ArchError::Field { field: name, reason: reason.into() }
}

fn in_range(name: &'static str, value: usize, max: usize) -> Result<(), ArchError> {
    if value == 0 || value > max {
        return Err(field(name, format!("is {value}; must be between 1 and {max}")));
    }
    Ok(())
}

fn positive_finite(name: &'static str, value: f64) -> Result<(), ArchError> {
    if !(value.is_finite() && value > 0.0) {
        return Err(field(name, format!("is {value}; must be a positive finite number")));
    }
    Ok(())
}

impl DecoderShape<'_> {
    pub fn validate(&self) -> Result<(), ArchError> {
        in_range("vocab_size", self.vocab_size, MAX_VOCAB)?;
        in_range("hidden_size", self.hidden_size, MAX_HIDDEN)?;
        in_range("intermediate_size", self.intermediate_size, MAX_INTERMEDIATE)?;
        in_range("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?;
        in_range("num_attention_heads", self.num_attention_heads, MAX_HEADS)?;
        let heads = self.num_attention_heads;
        if let Some(kv) = self.num_key_value_heads {
            in_range("num_key_value_heads", kv, heads)?;
            if !heads.is_multiple_of(kv) {
                return Err(field(
                    "num_key_value_heads",
                    format!("is {kv}; must divide num_attention_heads ({heads}) for grouped-query attention"),
                ));
            }
        }
        let head_dim = match self.head_dim {
            Some(d) => {
                in_range("head_dim", d, MAX_HEAD_DIM)?;
                d
            }
            None if !self.hidden_size.is_multiple_of(heads) => {
                return Err(field(
                    "num_attention_heads",
                    format!(
                        "is {heads}, which does not divide hidden_size ({}) and no head_dim is given",
                        self.hidden_size
                    ),
                ))
            }
            None => self.hidden_size / heads,
        };
        if head_dim % 2 != 0 || head_dim > MAX_HEAD_DIM {
            return Err(field(
                "head_dim",
                format!("is {head_dim}; rotary embeddings need an even size up to {MAX_HEAD_DIM}"),
            ));
        }
        positive_finite("rms_norm_eps", self.rms_norm_eps)?;
        if let Some(p) = self.max_position_embeddings {
            in_range("max_position_embeddings", p, MAX_POSITIONS)?;
        }
        if let Some(theta) = self.rope_theta {
            positive_finite("rope_theta", theta)?;
        }
        for (name, rope) in [("rope_scaling", self.rope_scaling), ("rope_parameters", self.rope_parameters)] {
            let Some(rope) = rope else { continue };
            validate_rope(name, rope)?;
        }
        Ok(())
    }
}

fn validate_rope(name: &'static str, rope: &RopeParameters) -> Result<(), ArchError> {
    let number = |what: &str, v: Option<f64>| match v {
        Some(v) if !(v.is_finite() && v > 0.0) => {
            Err(field(name, format!("`{what}` is {v}; must be a positive finite number")))
        }
        _ => Ok(()),
    };
    number("rope_theta", rope.rope_theta)?;
    number("factor", rope.factor)?;
    number("low_freq_factor", rope.low_freq_factor)?;
    number("high_freq_factor", rope.high_freq_factor)?;
    if let (Some(low), Some(high)) = (rope.low_freq_factor, rope.high_freq_factor) {
        if high <= low {
            return Err(field(name, format!("`high_freq_factor` ({high}) must exceed `low_freq_factor` ({low})")));
        }
    }
    if let Some(p) = rope.original_max_position_embeddings {
        if p == 0 || p > MAX_POSITIONS {
            return Err(field(
                name,
                format!("`original_max_position_embeddings` is {p}; must be between 1 and {MAX_POSITIONS}"),
            ));
        }
    }
    Ok(())
}

/// Token ids config.json names (`pad_token_id`, `bos_token_id`, `eos_token_id`, a number or a
/// list) must be rows of the embedding: the padding is filled with the pad id and looked up.
pub fn validate_token_ids(config: &serde_json::Value, vocab_size: usize) -> Result<(), ArchError> {
    for name in ["pad_token_id", "bos_token_id", "eos_token_id"] {
        let ids: Vec<&serde_json::Value> = match config.get(name) {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::Array(list)) => list.iter().collect(),
            Some(one) => vec![one],
        };
        for id in ids {
            match id.as_u64() {
                Some(id) if (id as u128) < vocab_size as u128 => {}
                _ => {
                    return Err(ArchError::TokenId {
                        field: name,
                        reason: format!("is {id}; must be a token id below vocab_size ({vocab_size})"),
                    })
                }
            }
        }
    }
    Ok(())
}
