//! The rotary position embedding: inverse frequencies as transformers computes them (default,
//! linear and llama3 scaling) and the cos/sin tables.

use candle_core::{DType, Device, Result, Tensor};
use serde::Deserialize;

/// `rope_scaling` / `rope_parameters` as written in config.json.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RopeParameters {
    #[serde(alias = "type")]
    pub rope_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
}

/// Inverse frequencies of the rotary embedding, computed in f32 exactly as transformers does
/// (its rope init runs in float32; computing in f64 shifts angles at long positions by ~1e-4).
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    pub fn new(head_dim: usize, theta: f64, scaling: Option<&RopeParameters>) -> Result<Self> {
        let dim = head_dim as f32;
        let base = theta as f32;
        let mut inv_freq: Vec<f32> = (0..head_dim).step_by(2).map(|i| 1.0f32 / base.powf(i as f32 / dim)).collect();
        let rope_type = scaling.and_then(|s| s.rope_type.as_deref()).unwrap_or("default");
        match rope_type {
            "default" => {}
            "linear" => {
                let factor = scaling.and_then(|s| s.factor).unwrap_or(1.0) as f32;
                inv_freq.iter_mut().for_each(|f| *f /= factor);
            }
            "llama3" => {
                let s = scaling.expect("llama3 rope type comes from a scaling block");
                let need = |v: Option<f64>, name: &str| {
                    v.ok_or_else(|| candle_core::Error::Msg(format!("llama3 rope scaling needs `{name}`")))
                };
                let factor = need(s.factor, "factor")? as f32;
                let low = need(s.low_freq_factor, "low_freq_factor")? as f32;
                let high = need(s.high_freq_factor, "high_freq_factor")? as f32;
                let old_ctx = s.original_max_position_embeddings.ok_or_else(|| {
                    candle_core::Error::Msg("llama3 rope scaling needs `original_max_position_embeddings`".into())
                })? as f32;
                let low_freq_wavelen = old_ctx / low;
                let high_freq_wavelen = old_ctx / high;
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                for f in inv_freq.iter_mut() {
                    let wavelen = two_pi / *f;
                    let scaled = if wavelen > low_freq_wavelen { *f / factor } else { *f };
                    let is_medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                    *f = if is_medium {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
            other => {
                candle_core::bail!("unsupported rope scaling type `{other}` (supported: default, linear, llama3)")
            }
        }
        Ok(Self { inv_freq })
    }

    /// From config.json: `rope_parameters` (newer transformers, theta included) wins over
    /// `rope_scaling` + `rope_theta`.
    pub fn from_config(
        head_dim: usize,
        rope_theta: Option<f64>,
        rope_scaling: Option<&RopeParameters>,
        rope_parameters: Option<&RopeParameters>,
        default_theta: f64,
    ) -> Result<Self> {
        let theta = rope_parameters.and_then(|p| p.rope_theta).or(rope_theta).unwrap_or(default_theta);
        Self::new(head_dim, theta, rope_parameters.or(rope_scaling))
    }

    /// `(cos, sin)` tables of shape `[seq_len, head_dim / 2]` for positions `0..seq_len`.
    pub fn tables(&self, seq_len: usize, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(seq_len * half);
        let mut sin = Vec::with_capacity(seq_len * half);
        for pos in 0..seq_len {
            for &f in &self.inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (seq_len, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (seq_len, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama3(theta: Option<f64>) -> RopeParameters {
        RopeParameters {
            rope_type: Some("llama3".into()),
            rope_theta: theta,
            factor: Some(8.0),
            low_freq_factor: Some(1.0),
            high_freq_factor: Some(4.0),
            original_max_position_embeddings: Some(8192),
        }
    }

    #[test]
    fn rope_parameters_key_equals_rope_scaling_plus_theta() {
        let old = RotaryEmbedding::from_config(128, Some(500000.0), Some(&llama3(None)), None, 10_000.0).unwrap();
        let new = RotaryEmbedding::from_config(128, None, None, Some(&llama3(Some(500000.0))), 10_000.0).unwrap();
        assert_eq!(old.inv_freq, new.inv_freq);
        let plain = RotaryEmbedding::from_config(128, Some(500000.0), None, None, 10_000.0).unwrap();
        // High frequencies are untouched, the lowest are divided by the factor.
        assert_eq!(old.inv_freq[0], plain.inv_freq[0]);
        assert!((old.inv_freq[63] * 8.0 - plain.inv_freq[63]).abs() <= plain.inv_freq[63] * 1e-6);
    }

    #[test]
    fn unknown_rope_type_is_an_error() {
        let yarn = RopeParameters { rope_type: Some("yarn".into()), ..Default::default() };
        let err = RotaryEmbedding::from_config(64, None, Some(&yarn), None, 10_000.0).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
    }
}
