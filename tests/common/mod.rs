//! Helpers shared by the app's integration tests: the shipped fixtures (the engine's helpers,
//! included from there) and runs of the skyscore binary that never touch the user's files.
#![allow(dead_code)]

#[path = "../../engine/tests/common/mod.rs"]
mod fixtures;

use std::path::Path;
use std::process::{Command, Output};

pub use fixtures::*;

/// A `skyscore` command that cannot reach the user's files or the network by accident: a
/// score store, an HF cache, a cache folder and a `TMPDIR` of its own, in a temporary folder
/// removed when this is dropped (keep it until the process ends), and `HF_HUB_OFFLINE=1`. Tests of the store pass `--store`; tests of the hub
/// set `HF_HOME` and `HF_HUB_OFFLINE` themselves. Derefs to the `Command`.
pub struct Isolated {
    command: Command,
    dir: tempfile::TempDir,
}

impl Isolated {
    /// The temporary folder this command's caches live in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl std::ops::Deref for Isolated {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.command
    }
}

impl std::ops::DerefMut for Isolated {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.command
    }
}

pub fn command() -> Isolated {
    let dir = tempfile::Builder::new().prefix("skyscore-test-").tempdir().expect("a temporary folder");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("a temporary folder");
    let mut command = Command::new(env!("CARGO_BIN_EXE_skyscore"));
    command
        .env("TMPDIR", &tmp)
        .env("SKYSCORE_STORE", dir.path().join("scores.redb"))
        .env("HF_HOME", dir.path().join("hf"))
        .env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .env("XDG_CACHE_HOME", dir.path().join("cache"));
    Isolated { command, dir }
}

/// Runs skyscore through [`command`]: a store of its own, so no run answers from another's
/// scores.
pub fn skyscore(args: &[&str]) -> Output {
    command().args(args).output().expect("run skyscore")
}

/// `skyscore score --model MODEL --input INPUT --output OUTPUT EXTRA...`
pub fn score(model: &str, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["score", "--model", model, "--input", p(input), "--output", p(output)];
    args.extend_from_slice(extra);
    skyscore(&args)
}

/// The key-value metadata in a Parquet file's footer, by key.
pub fn parquet_metadata(path: &Path) -> std::collections::BTreeMap<String, String> {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let kv = reader.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
    kv.into_iter().filter_map(|e| Some((e.key, e.value?))).collect()
}

/// `count(*), count(DISTINCT id), count(score)` of the scored table at `path`, as a CSV line
/// ("320,320,320"), read back through `skyscore sql`.
pub fn count_rows_ids_scores(path: &Path) -> String {
    let query = "SELECT count(*), count(DISTINCT id), count(score) FROM scored";
    let run = skyscore(&["sql", "-t", &format!("scored={}", p(path)), "--format", "csv", query]);
    assert!(run.status.success(), "{}", stderr(&run));
    String::from_utf8_lossy(&run.stdout).lines().last().unwrap_or_default().to_string()
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
