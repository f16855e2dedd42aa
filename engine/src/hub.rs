//! Where a model's files come from: a local checkpoint directory, or a Hugging Face Hub id
//! resolved through the standard cache (same layout as Python's huggingface_hub, so an existing
//! cache is reused). Honours `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN` and
//! `HF_HUB_OFFLINE`.

use std::path::{Path, PathBuf};

use hf_hub::{api::sync::ApiBuilder, Cache, Repo, RepoType};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("model directory {dir} has no {file}")]
    MissingLocalFile { dir: PathBuf, file: String },
    #[error(
        "{file} of {repo}@{revision} is not in the Hugging Face cache at {cache} and HF_HUB_OFFLINE is set \
         (download it once online, or point --model at a local directory)"
    )]
    NotCached { repo: String, revision: String, file: String, cache: PathBuf },
    #[error("could not download {file} of {repo}@{revision}: {reason}")]
    Download { repo: String, revision: String, file: String, reason: String },
    #[error("`{0}` is neither an existing directory nor a hub id of the form owner/name[@revision]")]
    BadSource(String),
    #[error("model directory {0} does not exist (hub ids are owner/name, without ./ or a local folder in front)")]
    MissingDir(PathBuf),
}

/// A `--model` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Local(PathBuf),
    Hub { repo_id: String, revision: String },
}

impl ModelSource {
    /// An existing directory wins; otherwise `owner/name` with an optional `@revision`.
    pub fn parse(spec: &str) -> Result<Self, HubError> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSource::Local(path.to_path_buf()));
        }
        // A path written as one (./x, ../x, /x, or under a folder that exists here) is a local
        // directory that is missing, not a hub id to look up on the network.
        let first = path.components().next();
        let local_looking = matches!(
            first,
            Some(std::path::Component::CurDir | std::path::Component::ParentDir | std::path::Component::RootDir)
        ) || spec
            .split('/')
            .next()
            .is_some_and(|head| !head.is_empty() && spec.contains('/') && Path::new(head).is_dir());
        if local_looking {
            return Err(HubError::MissingDir(path.to_path_buf()));
        }
        let (repo_id, revision) = match spec.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev),
            Some(_) => return Err(HubError::BadSource(spec.to_string())),
            None => (spec, "main"),
        };
        let parts: Vec<&str> = repo_id.split('/').collect();
        let valid_part = |p: &str| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !p.starts_with('.')
        };
        if parts.len() != 2 || !parts.iter().all(|p| valid_part(p)) {
            return Err(HubError::BadSource(spec.to_string()));
        }
        Ok(ModelSource::Hub { repo_id: repo_id.to_string(), revision: revision.to_string() })
    }
}

/// The hub cache directory: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Cache::from_env().path().clone(),
    }
}

/// `HF_HUB_OFFLINE` as huggingface_hub reads it.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// `HF_TOKEN`, else the token file that `huggingface-cli login` writes.
fn token() -> Option<String> {
    match std::env::var("HF_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => Cache::from_env().token(),
    }
}

/// Fetches the files of one model, from a directory or through the hub cache.
pub struct FileSource {
    source: ModelSource,
    cache_dir: PathBuf,
    offline: bool,
}

impl FileSource {
    pub fn new(source: ModelSource) -> Self {
        Self { source, cache_dir: hub_cache_dir(), offline: offline() }
    }

    /// The commit a hub revision resolves to in the cache, when known.
    pub fn cached_commit(&self) -> Option<String> {
        match &self.source {
            ModelSource::Local(_) => None,
            ModelSource::Hub { repo_id, revision } => self.snapshot_of(repo_id, revision),
        }
    }

    /// Path of `file`, downloading it into the cache when allowed and needed.
    pub fn get(&self, file: &str) -> Result<PathBuf, HubError> {
        match &self.source {
            ModelSource::Local(dir) => {
                let path = dir.join(file);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(HubError::MissingLocalFile { dir: dir.clone(), file: file.to_string() })
                }
            }
            ModelSource::Hub { repo_id, revision } => {
                if let Some(path) = self.cached(repo_id, revision, file) {
                    return Ok(path);
                }
                if self.offline {
                    return Err(HubError::NotCached {
                        repo: repo_id.clone(),
                        revision: revision.clone(),
                        file: file.to_string(),
                        cache: self.cache_dir.clone(),
                    });
                }
                self.download(repo_id, revision, file)
            }
        }
    }

    /// Like [`get`](Self::get) but `Ok(None)` when the file does not exist in the model.
    /// With a cached snapshot, a file huggingface_hub recorded as absent (`.no_exist/`) is not
    /// asked for again, and a failed download (no network) means absent rather than an error.
    pub fn get_optional(&self, file: &str) -> Result<Option<PathBuf>, HubError> {
        if let ModelSource::Hub { repo_id, .. } = &self.source {
            if let Some(commit) = self.cached_commit() {
                if self.repo_dir(repo_id).join(".no_exist").join(&commit).join(file).exists() {
                    return Ok(None);
                }
            }
        }
        match self.get(file) {
            Ok(p) => Ok(Some(p)),
            Err(HubError::MissingLocalFile { .. }) | Err(HubError::NotCached { .. }) => Ok(None),
            Err(HubError::Download { reason, .. }) if reason.contains("404") => Ok(None),
            Err(HubError::Download { reason, .. }) if self.cached_commit().is_some() => {
                tracing::warn!(file, %reason, "optional file not in the cache and not downloadable; going on without it");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn repo_dir(&self, repo_id: &str) -> PathBuf {
        self.cache_dir.join(format!("models--{}", repo_id.replace('/', "--")))
    }

    /// A branch or tag resolves through `refs/`; a full commit hash names its snapshot directly.
    fn snapshot_of(&self, repo_id: &str, revision: &str) -> Option<String> {
        let dir = self.repo_dir(repo_id);
        if let Ok(commit) = std::fs::read_to_string(dir.join("refs").join(revision)) {
            return Some(commit.trim().to_string());
        }
        let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
        (is_commit && dir.join("snapshots").join(revision).is_dir()).then(|| revision.to_string())
    }

    fn cached(&self, repo_id: &str, revision: &str, file: &str) -> Option<PathBuf> {
        let commit = self.snapshot_of(repo_id, revision)?;
        let path = self.repo_dir(repo_id).join("snapshots").join(commit).join(file);
        path.is_file().then_some(path)
    }

    fn download(&self, repo_id: &str, revision: &str, file: &str) -> Result<PathBuf, HubError> {
        let fail = |reason: String| HubError::Download {
            repo: repo_id.to_string(),
            revision: revision.to_string(),
            file: file.to_string(),
            reason,
        };
        let mut builder = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_token(token())
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            builder = builder.with_endpoint(endpoint);
        }
        let api = builder.build().map_err(|e| fail(e.to_string()))?;
        let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
        tracing::info!(repo = repo_id, revision, file, "downloading from the Hugging Face Hub");
        api.repo(repo).get(file).map_err(|e| fail(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids_and_revisions() {
        assert_eq!(
            ModelSource::parse("Skywork/Skywork-Reward-V2-Llama-3.1-8B-40M").unwrap(),
            ModelSource::Hub { repo_id: "Skywork/Skywork-Reward-V2-Llama-3.1-8B-40M".into(), revision: "main".into() }
        );
        assert_eq!(
            ModelSource::parse("a/b@v1.0").unwrap(),
            ModelSource::Hub { repo_id: "a/b".into(), revision: "v1.0".into() }
        );
        assert!(ModelSource::parse("no-slash").is_err());
        assert!(ModelSource::parse("a/b/c").is_err());
        assert!(ModelSource::parse("a/b@").is_err());
    }

    #[test]
    fn existing_directory_is_local() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().to_str().unwrap();
        assert_eq!(ModelSource::parse(spec).unwrap(), ModelSource::Local(dir.path().to_path_buf()));
        for missing in ["./models/x", "../x/y", "/nowhere/m"] {
            assert!(matches!(ModelSource::parse(missing), Err(HubError::MissingDir(_))), "{missing}");
        }
        // `src` exists in the crate folder tests run in: `src/nothing` is a missing directory.
        assert!(matches!(ModelSource::parse("src/nothing"), Err(HubError::MissingDir(_))));
        assert!(matches!(ModelSource::parse("Skywork/Reward"), Ok(ModelSource::Hub { .. })));
    }
}
