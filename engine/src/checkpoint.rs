//! A checkpoint on disk: config.json, tokenizer files and safetensors weights, read and checked
//! before any weight is loaded, so a broken or unsupported checkpoint fails with a clear message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::hub::{FileSource, HubError};
use crate::models::{ArchConfig, ArchError};
use crate::template::{ChatTemplate, TemplateError};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    // Not a `source`: the message already holds it, and error chains would print it twice.
    #[error("{path}: {error}")]
    Architecture { path: PathBuf, error: ArchError },
    #[error("the checkpoint has neither model.safetensors nor model.safetensors.index.json")]
    NoWeights,
}

/// Everything needed to build the engine, resolved to local paths.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// What the user asked for (`owner/name@rev` or a directory).
    pub model_id: String,
    /// The commit hash a hub revision resolved to, when known.
    pub revision: Option<String>,
    pub arch: ArchConfig,
    /// `pad_token_id` from config.json (transformers pools with this one first).
    pub config_pad_token_id: Option<u32>,
    pub tokenizer_path: PathBuf,
    tokenizer_config: Json,
    pub chat_template: Option<String>,
    pub weights: Vec<PathBuf>,
    /// SHA-256 over the files a score depends on: config.json, tokenizer.json,
    /// tokenizer_config.json, the chat template, and the weights (the hub commit, or each weight
    /// file's name, size and modification time: hashing gigabytes at every start would cost
    /// more than the rows it saves). Names the model in the score store.
    pub files_sha256: String,
    /// The same without modification times: equal on every machine that has the same files
    /// (a cluster's client and executors compare it).
    pub content_sha256: String,
}

fn read_json(path: &Path) -> Result<Json, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Read { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|source| CheckpointError::Json { path: path.into(), source })
}

impl Checkpoint {
    /// Resolves every file, weights included (downloading them from the hub when needed).
    pub fn resolve(model_id: &str, files: &FileSource) -> Result<Self, CheckpointError> {
        Self::resolve_with(model_id, files, true)
    }

    /// Resolves the small files only: config, tokenizer, template, and the weights' names and
    /// sizes where they are local. A hub model's weights are not downloaded (its commit names
    /// them), so a cluster client can describe a model it never runs.
    pub fn describe(model_id: &str, files: &FileSource) -> Result<Self, CheckpointError> {
        Self::resolve_with(model_id, files, false)
    }

    fn resolve_with(model_id: &str, files: &FileSource, fetch_weights: bool) -> Result<Self, CheckpointError> {
        let config_path = files.get("config.json")?;
        let config = read_json(&config_path)?;
        let arch = ArchConfig::from_config(&config)
            .map_err(|error| CheckpointError::Architecture { path: config_path.clone(), error })?;

        let tokenizer_path = files.get("tokenizer.json")?;
        let tokenizer_config_path = files.get("tokenizer_config.json")?;
        let tokenizer_config = read_json(&tokenizer_config_path)?;
        // Newer transformers save the template beside tokenizer_config.json and prefer it.
        let chat_template = match files.get_optional("chat_template.jinja")? {
            Some(p) => Some(std::fs::read_to_string(&p).map_err(|source| CheckpointError::Read { path: p, source })?),
            None => template_from_tokenizer_config(&tokenizer_config),
        };

        let revision = files.cached_commit();
        let weights = if !fetch_weights && revision.is_some() { Vec::new() } else { Self::weight_files(files)? };
        let config_pad_token_id = config.get("pad_token_id").and_then(Json::as_u64).map(|v| v as u32);
        let small_files = [config_path.as_path(), tokenizer_path.as_path(), tokenizer_config_path.as_path()];
        let (files_sha256, content_sha256) =
            files_digests(&small_files, chat_template.as_deref(), revision.as_deref(), &weights)?;
        Ok(Self {
            model_id: model_id.to_string(),
            revision,
            files_sha256,
            content_sha256,
            arch,
            config_pad_token_id,
            tokenizer_path,
            tokenizer_config,
            chat_template,
            weights,
        })
    }

    fn weight_files(files: &FileSource) -> Result<Vec<PathBuf>, CheckpointError> {
        Ok(match files.get_optional("model.safetensors.index.json")? {
            Some(index_path) => {
                let index = read_json(&index_path)?;
                let map = index.get("weight_map").and_then(Json::as_object).ok_or_else(|| {
                    CheckpointError::Invalid { path: index_path.clone(), reason: "no `weight_map` object".into() }
                })?;
                let mut shards: Vec<&str> = map.values().filter_map(Json::as_str).collect();
                shards.sort_unstable();
                shards.dedup();
                shards.into_iter().map(|s| files.get(s)).collect::<Result<Vec<_>, _>>()?
            }
            None => match files.get_optional("model.safetensors")? {
                Some(p) => vec![p],
                None => return Err(CheckpointError::NoWeights),
            },
        })
    }

    /// The checkpoint's chat template, compiled with its special tokens.
    pub fn template(&self) -> Result<ChatTemplate, TemplateError> {
        ChatTemplate::new(self.chat_template.as_deref().ok_or(TemplateError::Missing)?, self.special_tokens())
    }

    /// Special-token strings from tokenizer_config.json (`bos_token`, `eos_token`, ...), which
    /// transformers hands to the chat template. Values may be strings or AddedToken objects.
    pub fn special_tokens(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for key in ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"] {
            if let Some(tok) = self.tokenizer_config.get(key).and_then(token_content) {
                out.insert(key.to_string(), tok);
            }
        }
        out
    }
}

/// The two digests of [`Checkpoint`]: `(files_sha256, content_sha256)`, in one read of the
/// files; they differ only in the weights' modification times.
fn files_digests(
    small_files: &[&Path],
    chat_template: Option<&str>,
    revision: Option<&str>,
    weights: &[PathBuf],
) -> Result<(String, String), CheckpointError> {
    use sha2::{Digest, Sha256};
    // [files_sha256, content_sha256]: the same bytes, and the mtimes for the first only.
    let mut digests = [Sha256::new(), Sha256::new()];
    let both = |digests: &mut [Sha256; 2], bytes: &[u8]| digests.iter_mut().for_each(|h| h.update(bytes));
    let read = |p: &Path| std::fs::read(p).map_err(|source| CheckpointError::Read { path: p.into(), source });
    for path in small_files {
        let bytes = read(path)?;
        both(&mut digests, &(bytes.len() as u64).to_le_bytes());
        both(&mut digests, &bytes);
    }
    both(&mut digests, chat_template.unwrap_or_default().as_bytes());
    match revision {
        Some(commit) => both(&mut digests, commit.as_bytes()),
        None => {
            for w in weights {
                let meta = std::fs::metadata(w).map_err(|source| CheckpointError::Read { path: w.clone(), source })?;
                let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                both(&mut digests, w.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
                both(&mut digests, &meta.len().to_le_bytes());
                digests[0].update(mtime.map_or(0, |d| d.as_nanos()).to_le_bytes());
            }
        }
    }
    let [files, content] = digests;
    Ok((hex::encode(files.finalize()), hex::encode(content.finalize())))
}

fn token_content(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` where `default` is used.
fn template_from_tokenizer_config(cfg: &Json) -> Option<String> {
    match cfg.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    }
}
