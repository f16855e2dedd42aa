//! Output paths that never lose data. Results are written under a temporary name next to their
//! target, owned by a lock its writer holds for as long as it lives ([`temp`]), and reach the
//! target only once complete ([`target`]): a file replaces the file the user named, a folder
//! output adds its files to the folder without touching what it held. An output that is, or
//! lies inside, an input is refused before any work.

pub mod target;
pub mod temp;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use target::{check_target, lies_within, OutputKind, Placed};
pub use temp::{remove_stale_temps, TempOutput};

/// `path` from the current directory: what a cluster's scheduler and executors, which run in
/// their own directories, must be given.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{}: cannot make the path absolute", path.display()))
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

/// Writes `bytes` to `path` through a temporary sibling, so a reader never sees a half-written
/// file and a failure leaves an existing `path` as it was.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp = TempOutput::beside(path, OutputKind::File)?;
    std::fs::write(temp.path(), bytes).with_context(|| format!("writing {}", temp.path().display()))?;
    temp.place(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn atomic_writes_replace_the_file_and_leave_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.json");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["stats.json"]);
    }
}
