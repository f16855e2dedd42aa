//! The scorer configuration file (YAML), as the user writes it:
//!
//! ```yaml
//! name: SkyworkRewardScorer
//! model: Skywork/Skywork-Reward-V2-Llama-3.1-8B-40M
//! max_length: 4096
//! batch_size: 16
//! ```
//!
//! Command-line flags override it; unknown keys are errors (a typo must not be ignored).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use skyscore_engine::device::DeviceList;
use skyscore_engine::encode::TruncationSide;

use crate::run::DtypeChoice;

pub const DEFAULT_MODEL: &str = "Skywork/Skywork-Reward-V2-Llama-3.1-8B-40M";
pub const DEFAULT_NAME: &str = "SkyworkRewardScorer";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerConfig {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default)]
    pub truncation_side: TruncationSide,
    #[serde(default)]
    pub max_batch_tokens: Option<usize>,
    #[serde(default)]
    pub device: Option<DeviceList>,
    #[serde(default)]
    pub dtype: Option<DtypeChoice>,
}

fn default_name() -> String {
    DEFAULT_NAME.into()
}
fn default_model() -> String {
    DEFAULT_MODEL.into()
}
fn default_max_length() -> usize {
    4096
}
fn default_batch_size() -> usize {
    16
}

impl Default for ScorerConfig {
    fn default() -> Self {
        serde_yaml_ng::from_str("{}").expect("defaults parse")
    }
}

impl ScorerConfig {
    pub fn from_yaml(text: &str) -> Result<Self> {
        Ok(serde_yaml_ng::from_str(text)?)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Self::from_yaml(&text).with_context(|| format!("parsing config {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_spec_parses() {
        let cfg = ScorerConfig::from_yaml(
            "name: SkyworkRewardScorer\nmodel: Skywork/Skywork-Reward-V2-Llama-3.1-8B-40M\nmax_length: 4096\nbatch_size: 16\n",
        )
        .unwrap();
        assert_eq!(cfg, ScorerConfig::default());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = ScorerConfig::from_yaml("batchsize: 8").unwrap_err().to_string();
        assert!(err.contains("batchsize"), "{err}");
    }

    #[test]
    fn truncation_side_parses() {
        let cfg = ScorerConfig::from_yaml("truncation_side: left\nmax_length: 64").unwrap();
        assert_eq!(cfg.truncation_side, TruncationSide::Left);
        assert_eq!(cfg.max_length, 64);
    }

    #[test]
    fn dtype_is_checked_when_the_config_is_read() {
        let bf16 = skyscore_engine::Dtype::Bf16;
        assert_eq!(ScorerConfig::from_yaml("dtype: bfloat16").unwrap().dtype, Some(DtypeChoice::Fixed(bf16)));
        assert_eq!(ScorerConfig::from_yaml("dtype: auto").unwrap().dtype, Some(DtypeChoice::Auto));
        let err = format!("{:#}", ScorerConfig::from_yaml("dtype: f8").unwrap_err());
        assert!(err.contains("unknown dtype `f8`"), "{err}");
    }

    #[test]
    fn devices_are_checked_when_the_config_is_read() {
        let cfg = ScorerConfig::from_yaml("device: cuda:0,cuda:1").unwrap();
        assert_eq!(cfg.device, Some("cuda:0,cuda:1".parse().unwrap()));
        let err = format!("{:#}", ScorerConfig::from_yaml("device: cpu,cuda").unwrap_err());
        assert!(err.contains("mixes cpu and cuda"), "{err}");
    }
}
