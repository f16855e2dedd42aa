//! Temporary outputs whose owner is known without trusting host names or process ids: each one
//! is named `.NAME.skyscore-ID.tmp[.EXT]` (a file, or a folder for folder outputs) and comes
//! with a lock file `.NAME.skyscore-ID.lock` on which its writer holds an exclusive lock for as
//! long as it lives. A temporary is stale exactly when nobody holds its lock: the writer was
//! killed, on this machine or on another one sharing the folder (Linux takes `flock` locks on
//! NFS through the server). A temporary without a lock file (an older skyscore's) is never
//! touched.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};

use super::target::{move_files_into, OutputKind, Placed};

/// A temporary output next to its target, removed (with its lock) when dropped unless it was
/// placed: a failure at any step leaves nothing behind.
#[derive(Debug)]
pub struct TempOutput {
    temp: PathBuf,
    kind: OutputKind,
    lock_path: PathBuf,
    /// Held until drop: while it is, no other run takes the temporary for stale.
    lock: Option<File>,
    /// The target's parent folders this output had to create, removed again on failure.
    created_dirs: Vec<PathBuf>,
    placed: bool,
}

/// This machine's name as it appears in temporary names (for people reading a folder: the
/// lock, not the name, says whether the writer lives).
fn host_tag() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .unwrap_or_default();
        let tag: String = raw.trim().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        if tag.is_empty() {
            "host".to_string()
        } else {
            tag
        }
    })
}

/// `HOST-PID-N-RANDOM`: unique between runs and outputs of one run, even for two containers
/// that share a host name and a process id.
fn unique_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(n);
    format!("{}-{}-{n}-{:08x}", host_tag(), std::process::id(), hasher.finish() as u32)
}

/// What every temporary of `target` starts with: `.NAME.skyscore-` (NAME without extension).
fn prefix(target: &Path) -> String {
    let name = target.file_name().map(Path::new).unwrap_or(Path::new("output"));
    let stem = name.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    format!(".{stem}.skyscore-")
}

/// The folder `target` lives in.
fn folder_of(target: &Path) -> PathBuf {
    match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl TempOutput {
    /// Claims a temporary name beside `target` for an output of `kind` (removing stale
    /// temporaries of the same target first), creating the target's missing parent folders.
    /// Nothing is created at the temporary path itself: the writer creates it.
    pub fn beside(target: &Path, kind: OutputKind) -> Result<Self> {
        let folder = folder_of(target);
        let created_dirs = create_missing_dirs(&folder)?;
        remove_stale_temps(target);
        let prefix = prefix(target);
        let ext = match kind {
            OutputKind::File => target.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default(),
            OutputKind::Folder => String::new(),
        };
        let id = unique_id();
        let lock_path = folder.join(format!("{prefix}{id}.lock"));
        // Locked under a name no scan looks at, then renamed: nobody can see the lock file
        // before it is held.
        let claiming = folder.join(format!("{prefix}{id}.claim"));
        let lock = File::options()
            .write(true)
            .create_new(true)
            .open(&claiming)
            .with_context(|| format!("cannot create a temporary file in {}", folder.display()))?;
        lock.lock().with_context(|| format!("cannot lock {}", claiming.display()))?;
        if let Err(e) = std::fs::rename(&claiming, &lock_path) {
            let _ = std::fs::remove_file(&claiming);
            return Err(e).with_context(|| format!("cannot create {}", lock_path.display()));
        }
        let temp = folder.join(format!("{prefix}{id}.tmp{ext}"));
        Ok(Self { temp, kind, lock_path, lock: Some(lock), created_dirs, placed: false })
    }

    /// Where the writer writes (a file, or a folder it creates).
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// The temporary path as a DataFusion COPY target: folders end with `/`, which is how
    /// DataFusion tells a folder output from a file.
    pub fn copy_location(&self) -> Result<String> {
        let path = self.temp.to_str().context("the output path is not UTF-8")?;
        Ok(match self.kind {
            OutputKind::File => path.to_string(),
            OutputKind::Folder => format!("{path}/"),
        })
    }

    /// Moves the complete output into place: a file replaces `target`; a folder's files are
    /// moved into `target` (created if missing) beside what it holds, none replaced. On failure
    /// nothing of this output stays, in the target or beside it.
    pub fn place(mut self, target: &Path) -> Result<Placed> {
        let placed = match self.kind {
            OutputKind::File => std::fs::rename(&self.temp, target)
                .map(|()| Placed::File)
                .with_context(|| format!("moving {} to {}", self.temp.display(), target.display()))?,
            OutputKind::Folder if !self.temp.exists() => Placed::Folder { files: Vec::new() },
            OutputKind::Folder => Placed::Folder { files: move_files_into(&self.temp, target)? },
        };
        self.placed = true;
        Ok(placed)
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        remove_path(&self.temp);
        // The lock file goes while it is still held; a scan that opened it just before finds
        // no temporary of this id left.
        let _ = std::fs::remove_file(&self.lock_path);
        drop(self.lock.take());
        if !self.placed {
            for dir in self.created_dirs.iter().rev() {
                let _ = std::fs::remove_dir(dir); // only if still empty
            }
        }
    }
}

/// Removes a file or a folder (absent is fine).
fn remove_path(path: &Path) {
    let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
}

/// Creates `dir` and its missing parents; returns the ones it created, outermost first.
fn create_missing_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    missing.reverse();
    for d in &missing {
        if let Err(e) = std::fs::create_dir(d) {
            for made in missing.iter().take_while(|m| *m != d).collect::<Vec<_>>().into_iter().rev() {
                let _ = std::fs::remove_dir(made);
            }
            return Err(e).with_context(|| format!("cannot create the folder {}", d.display()));
        }
    }
    Ok(missing)
}

/// Removes the temporaries of `target` whose writer is gone (nobody holds their lock), so
/// hidden partial outputs do not pile up after killed runs. Live ones, on any machine, stay.
pub fn remove_stale_temps(target: &Path) {
    let folder = folder_of(target);
    let prefix = prefix(target);
    let Ok(entries) = std::fs::read_dir(&folder) else { return };
    let names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    for name in &names {
        let Some(id) = name.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(".lock")) else { continue };
        let lock_path = folder.join(name);
        let Ok(lock) = File::options().write(true).open(&lock_path) else { continue };
        if lock.try_lock().is_err() {
            continue; // its writer lives (or the lock cannot be taken: leave it)
        }
        let temp_prefix = format!("{prefix}{id}.tmp");
        for temp in names.iter().filter(|n| n.starts_with(&temp_prefix)) {
            let path = folder.join(temp);
            tracing::info!("removing {} (left by a run that was killed)", path.display());
            remove_path(&path);
        }
        let _ = std::fs::remove_file(&lock_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        names
    }

    #[test]
    fn temp_names_are_unique_keep_the_extension_and_are_locked() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.parquet");
        let a = TempOutput::beside(&target, OutputKind::File).unwrap();
        let b = TempOutput::beside(&target, OutputKind::File).unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(a.path().parent(), Some(dir.path()));
        assert_eq!(a.path().extension().unwrap(), "parquet");
        let folder = TempOutput::beside(&dir.path().join("parts"), OutputKind::Folder).unwrap();
        assert!(folder.copy_location().unwrap().ends_with(".tmp/"));
        // Each holds its lock: a second claim on it fails while the output lives.
        let lock = File::options().write(true).open(&a.lock_path).unwrap();
        assert!(lock.try_lock().is_err(), "the writer's lock is held");
        drop((a, b, folder));
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    #[test]
    fn only_temporaries_whose_lock_nobody_holds_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.jsonl");
        // A live writer (this process, through its own lock), a dead one (lock file, no holder),
        // and an older skyscore's temporary without a lock file.
        let live = TempOutput::beside(&target, OutputKind::File).unwrap();
        std::fs::write(live.path(), "live partial").unwrap();
        let dead_lock = dir.path().join(".out.skyscore-elsewhere-7-0-0000abcd.lock");
        let dead_temp = dir.path().join(".out.skyscore-elsewhere-7-0-0000abcd.tmp.jsonl");
        std::fs::write(&dead_lock, "").unwrap();
        std::fs::write(&dead_temp, "dead partial").unwrap();
        let dead_folder = dir.path().join(".out.skyscore-elsewhere-8-0-0000abcd.tmp");
        std::fs::create_dir_all(dead_folder.join("g=1")).unwrap();
        std::fs::write(dir.path().join(".out.skyscore-elsewhere-8-0-0000abcd.lock"), "").unwrap();
        let old = dir.path().join(".out.skyscore-otherhost-999-0.tmp.jsonl");
        std::fs::write(&old, "an older version's partial").unwrap();
        let user = dir.path().join("out.skyscore-notes.lock");
        std::fs::write(&user, "the user's file").unwrap();

        remove_stale_temps(&target);
        assert!(!dead_temp.exists() && !dead_lock.exists() && !dead_folder.exists());
        assert_eq!(std::fs::read_to_string(live.path()).unwrap(), "live partial");
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "an older version's partial");
        assert_eq!(std::fs::read_to_string(&user).unwrap(), "the user's file");
        let live_path = live.path().to_path_buf();
        drop(live);
        assert!(!live_path.exists(), "a dropped temporary is removed");
    }

    #[test]
    fn a_failed_output_removes_the_folders_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/out.parquet");
        let temp = TempOutput::beside(&target, OutputKind::File).unwrap();
        std::fs::write(temp.path(), "partial").unwrap();
        drop(temp);
        assert!(!dir.path().join("a").exists());
        // Placed, they stay.
        let temp = TempOutput::beside(&target, OutputKind::File).unwrap();
        std::fs::write(temp.path(), "whole").unwrap();
        temp.place(&target).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "whole");
        assert_eq!(names(&dir.path().join("a/b")), ["out.parquet"]);
    }
}
