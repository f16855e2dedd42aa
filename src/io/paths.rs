//! Output paths that never lose data: results are written under a temporary name unique to
//! this run, next to the target, and replace the target only once complete; an output that is
//! the input is refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

/// This machine's name as it appears in temporary names: letters, digits, `.` and `_` only
/// (`-` separates the fields of the name).
fn host_tag() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .unwrap_or_default();
        let tag: String =
            raw.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
        if tag.is_empty() {
            "unknown_host".to_string()
        } else {
            tag
        }
    })
}

/// A name next to `target` that no other run uses, on this machine or another sharing the
/// folder: `.NAME.skyscore-HOST-PID-N.tmp.EXT`. The extension stays last, for writers that pick
/// the format (or file vs folder) by it.
pub fn temp_sibling(target: &Path) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let stem = target.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = target.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    target.with_file_name(format!(".{stem}.skyscore-{}-{}-{n}.tmp{ext}", host_tag(), std::process::id()))
}

/// The host and process id in a temporary name made by [`temp_sibling`] (after its prefix).
fn temp_owner(rest: &str) -> Option<(&str, u32)> {
    let fields = rest.split(".tmp").next()?;
    let mut it = fields.rsplitn(3, '-');
    let (_n, pid, host) = (it.next()?, it.next()?, it.next()?);
    Some((host, pid.parse().ok()?))
}

/// Removes temporary results of `target` left by runs on this machine that were killed (their
/// process is gone), so hidden partial files do not pile up. Another machine's temporaries (a
/// shared folder, a cluster's output) are never touched, however old: their process cannot be
/// checked from here. Only on Linux, where a process id can be checked.
pub fn remove_stale_temps(target: &Path) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let stem = target.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{stem}.skyscore-");
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let Some((host, pid)) = temp_owner(rest) else { continue };
        if host == host_tag() && !Path::new("/proc").join(pid.to_string()).exists() {
            tracing::info!("removing {} (left by a run that was killed)", entry.path().display());
            remove_temp(&entry.path());
        }
    }
}

/// `path` from the current directory: what a cluster's scheduler and executors, which run in
/// their own directories, must be given.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{}: cannot make the path absolute", path.display()))
}

/// Moves a complete result into place (a file, or the folder of a partitioned write).
pub fn replace_with(temp: &Path, target: &Path) -> Result<()> {
    if temp.is_dir() && target.is_dir() {
        std::fs::remove_dir_all(target).with_context(|| format!("replacing {}", target.display()))?;
    }
    std::fs::rename(temp, target).with_context(|| format!("moving {} to {}", temp.display(), target.display()))
}

/// Removes a temporary result after a failure (file or folder; absent is fine).
pub fn remove_temp(temp: &Path) {
    let _ = if temp.is_dir() { std::fs::remove_dir_all(temp) } else { std::fs::remove_file(temp) };
}

/// Whether two paths name the same file (through links, `..`, hard links): same device and
/// inode on Unix, same canonical path elsewhere. A path that does not exist is no file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
    }
}

/// Refuses to write `output` over `input` (it would replace the dataset with its scores).
pub fn check_not_input(input: &Path, output: &Path) -> Result<()> {
    if same_file(input, output) {
        bail!(
            "--output {} is the input file {}: writing there would replace the data with its scores; choose another file",
            output.display(),
            input.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_unique_and_keep_the_extension() {
        let a = temp_sibling(Path::new("/d/out.parquet"));
        let b = temp_sibling(Path::new("/d/out.parquet"));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/d")));
        assert_eq!(a.extension().unwrap(), "parquet");
        assert!(temp_sibling(Path::new("dir")).extension().is_none_or(|e| e == "tmp"));
    }

    #[test]
    fn only_this_hosts_dead_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.jsonl");
        let dead = 999_999_999u32; // above Linux's pid_max: never a live process
        let here = host_tag();
        let mine_dead = format!(".out.skyscore-{here}-{dead}-0.tmp.jsonl");
        let mine_live = format!(".out.skyscore-{here}-{}-0.tmp.jsonl", std::process::id());
        let other_host = format!(".out.skyscore-another.host_{dead}-{dead}-0.tmp.jsonl");
        let old_format = format!(".out.skyscore-{dead}-0.tmp.jsonl");
        for name in [&mine_dead, &mine_live, &other_host, &old_format] {
            std::fs::write(dir.path().join(name), "partial").unwrap();
        }
        assert_eq!(temp_owner(mine_dead.strip_prefix(".out.skyscore-").unwrap()), Some((here, dead)));
        assert!(temp_sibling(&target).file_name().unwrap().to_string_lossy().contains(&format!("-{here}-")));
        remove_stale_temps(&target);
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        left.sort();
        let mut expected = vec![mine_live, other_host, old_format];
        expected.sort();
        if cfg!(target_os = "linux") {
            assert_eq!(left, expected, "only this host's temporary of a dead process goes");
        }
    }

    #[test]
    fn the_same_file_is_recognised_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.jsonl");
        std::fs::write(&file, "{}\n").unwrap();
        let via_dots = dir.path().join("sub/../d.jsonl");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(same_file(&file, &via_dots));
        #[cfg(unix)]
        {
            let link = dir.path().join("link.jsonl");
            std::os::unix::fs::symlink(&file, &link).unwrap();
            assert!(check_not_input(&file, &link).unwrap_err().to_string().contains("is the input file"));
        }
        assert!(!same_file(&file, &dir.path().join("other.jsonl")));
    }
}
