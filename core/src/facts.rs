//! [`ModelFacts`]: what a score depends on besides the conversation, typed once. The same facts
//! name a model in the score store, travel as Parquet key-value metadata next to the scores, and
//! are what a cluster client expects its executors to state; every `skyscore.*` key is spelled
//! here and nowhere else.

use serde::{Deserialize, Serialize};

/// The key-value metadata keys (Parquet files, `skyscore store info`, cluster checks).
pub mod keys {
    pub const VERSION: &str = "skyscore.version";
    pub const MODEL: &str = "skyscore.model";
    pub const REVISION: &str = "skyscore.revision";
    pub const ARCHITECTURE: &str = "skyscore.architecture";
    pub const CHECKPOINT_SHA256: &str = "skyscore.checkpoint_sha256";
    pub const TEMPLATE_SHA256: &str = "skyscore.template_sha256";
    pub const MAX_LENGTH: &str = "skyscore.max_length";
    pub const TRUNCATION_SIDE: &str = "skyscore.truncation_side";
    pub const DTYPE: &str = "skyscore.dtype";
    /// Only in a store's model description: the device kind (GPU kernels round differently).
    pub const DEVICE: &str = "skyscore.device";
    /// Only in a store's model description: the digest of the checkpoint's files.
    pub const FILES_SHA256: &str = "skyscore.files_sha256";
}

/// A loaded model and how it is run: two scorers with equal facts give equal scores.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFacts {
    /// The model as the user named it (a hub id or a directory).
    pub model: String,
    /// The hub revision asked for, if any.
    pub revision: Option<String>,
    /// `LlamaForSequenceClassification`, `Qwen3ForSequenceClassification`.
    pub architecture: String,
    /// The digest of config.json, the tokenizer files and the weight index (equal on every
    /// machine with the same files; no local paths).
    pub checkpoint_sha256: String,
    /// The digest of the chat template the prompts are rendered with.
    pub template_sha256: String,
    pub max_length: usize,
    /// `right` or `left`.
    pub truncation_side: String,
    /// `f32`, `f16` or `bf16`.
    pub dtype: String,
}

impl ModelFacts {
    /// The facts that are equal on every machine with the same files (the model's name and
    /// revision left out: a directory has another path on another machine). A cluster client
    /// expects its executors to state these.
    pub fn portable_pairs(&self) -> Vec<(String, String)> {
        vec![
            (keys::ARCHITECTURE.into(), self.architecture.clone()),
            (keys::CHECKPOINT_SHA256.into(), self.checkpoint_sha256.clone()),
            (keys::TEMPLATE_SHA256.into(), self.template_sha256.clone()),
            (keys::MAX_LENGTH.into(), self.max_length.to_string()),
            (keys::TRUNCATION_SIDE.into(), self.truncation_side.clone()),
            (keys::DTYPE.into(), self.dtype.clone()),
        ]
    }

    /// Every fact, named as in Parquet metadata: model, revision (empty when none), then
    /// [`Self::portable_pairs`].
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = vec![
            (keys::MODEL.into(), self.model.clone()),
            (keys::REVISION.into(), self.revision.clone().unwrap_or_default()),
        ];
        pairs.extend(self.portable_pairs());
        pairs
    }

    /// [`Self::pairs`] after the skyscore version that wrote them: the key-value metadata of
    /// an output file.
    pub fn metadata(&self, version: &str) -> Vec<(String, String)> {
        let mut pairs = vec![(keys::VERSION.into(), version.to_string())];
        pairs.extend(self.pairs());
        pairs
    }

    /// One line naming the model: `key=value` pairs joined by `;`.
    pub fn fingerprint(&self) -> String {
        join(&self.pairs())
    }

    /// The description of this model in the score store, whose digest is the model's id there:
    /// the fingerprint, the device kind and the checkpoint files' digest.
    pub fn store_description(&self, device_kind: &str, files_sha256: &str) -> String {
        format!("{};{}={device_kind};{}={files_sha256}", self.fingerprint(), keys::DEVICE, keys::FILES_SHA256)
    }

    /// The facts a scorer must state when only the model's name and run settings are known
    /// (a cluster client that cannot read the model's files).
    pub fn name_only_pairs(
        model: &str,
        max_length: usize,
        truncation_side: &str,
        dtype: &str,
    ) -> Vec<(String, String)> {
        vec![
            (keys::MODEL.into(), model.to_string()),
            (keys::MAX_LENGTH.into(), max_length.to_string()),
            (keys::TRUNCATION_SIDE.into(), truncation_side.to_string()),
            (keys::DTYPE.into(), dtype.to_string()),
        ]
    }
}

/// The model a store description (see [`ModelFacts::store_description`]) names.
pub fn described_model(description: &str) -> Option<&str> {
    description.split(';').find_map(|part| part.strip_prefix(keys::MODEL)?.strip_prefix('='))
}

fn join(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ModelFacts {
        ModelFacts {
            model: "Skywork/X".into(),
            revision: None,
            architecture: "LlamaForSequenceClassification".into(),
            checkpoint_sha256: "c".into(),
            template_sha256: "t".into(),
            max_length: 4096,
            truncation_side: "right".into(),
            dtype: "f32".into(),
        }
    }

    /// The store ids of every existing store are digests of this text: it must never change.
    #[test]
    fn store_descriptions_keep_their_historical_form() {
        assert_eq!(
            facts().store_description("cpu", "f"),
            "skyscore.model=Skywork/X;skyscore.revision=;skyscore.architecture=LlamaForSequenceClassification;\
             skyscore.checkpoint_sha256=c;skyscore.template_sha256=t;skyscore.max_length=4096;\
             skyscore.truncation_side=right;skyscore.dtype=f32;skyscore.device=cpu;skyscore.files_sha256=f"
        );
    }

    #[test]
    fn metadata_leads_with_the_version_and_descriptions_name_their_model() {
        let metadata = facts().metadata("0.1.0");
        assert_eq!(metadata[0], (keys::VERSION.to_string(), "0.1.0".to_string()));
        assert_eq!(metadata.len(), 9);
        let with_revision = ModelFacts { revision: Some("abc".into()), model: "Skywork/X@abc".into(), ..facts() };
        assert_eq!(described_model(&with_revision.store_description("cuda", "f")), Some("Skywork/X@abc"));
        assert_eq!(described_model("skyscore.dtype=f32"), None);
        assert_eq!(described_model("skyscore.modelx=a;skyscore.model=b"), Some("b"));
    }
}
