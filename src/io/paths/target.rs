//! Output targets as DataFusion reads them (one file, or a folder of files), the checks made
//! before any work (a file where a folder is asked, an output inside an input), and moving a
//! complete folder output into its target without replacing anything there.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What an output path stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// One file at the path (replaced when complete).
    File,
    /// A folder the output's files go into, beside what it already holds.
    Folder,
}

impl OutputKind {
    /// How DataFusion's COPY reads a target: a folder when partitioned, when the
    /// `single_file_output` option says so, when the path ends with `/` or when its last part
    /// has no extension; otherwise one file.
    pub fn of_copy(target: &str, partitioned: bool, single_file_output: Option<bool>) -> Self {
        if partitioned {
            return OutputKind::Folder;
        }
        if let Some(single) = single_file_output {
            return if single { OutputKind::File } else { OutputKind::Folder };
        }
        let last = target.rsplit(['/', std::path::MAIN_SEPARATOR]).next().unwrap_or("");
        if target.ends_with('/') || !last.contains('.') || last.ends_with('.') {
            OutputKind::Folder
        } else {
            OutputKind::File
        }
    }
}

/// What [`super::TempOutput::place`] put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    File,
    /// The files added to the folder.
    Folder {
        files: Vec<PathBuf>,
    },
}

/// Refuses, before any work, an output that cannot be written as asked or would change an
/// input: a file target that is a folder, a folder target that is a file, a target that is,
/// or lies inside, one of `inputs` (files or folders of the statement's tables).
pub fn check_target(target: &Path, kind: OutputKind, inputs: &[PathBuf]) -> Result<()> {
    let shown = target.display();
    match kind {
        OutputKind::File if target.is_dir() => bail!(
            "{shown} is a folder: an output file cannot replace it (end the path with `/` to add files to the folder)"
        ),
        OutputKind::Folder if target.exists() && !target.is_dir() => bail!(
            "{shown} is a file, and this output is a folder of files (a path ending with `/`, without an \
             extension, or PARTITIONED BY); give a file name with an extension, or another folder"
        ),
        _ => {}
    }
    if let Some(input) = inputs.iter().find(|input| lies_within(target, input)) {
        bail!(
            "the output {shown} is, or lies inside, the input {}: writing there would change the data being read; \
             choose another path",
            input.display()
        );
    }
    Ok(())
}

/// Whether `path` (which need not exist) is `input` or lies inside it, through links and `..`.
pub fn lies_within(path: &Path, input: &Path) -> bool {
    if super::same_file(path, input) {
        return true;
    }
    let (Some(path), Ok(input)) = (resolved(path), std::fs::canonicalize(input)) else { return false };
    path.starts_with(&input)
}

/// `path` made absolute, `.` and `..` taken out, and its longest existing part resolved
/// (links); the rest as written.
fn resolved(path: &Path) -> Option<PathBuf> {
    let mut lexical = PathBuf::new();
    for part in std::path::absolute(path).ok()?.components() {
        match part {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    let mut out = loop {
        match std::fs::canonicalize(existing) {
            Ok(canonical) => break canonical,
            Err(_) => {
                rest.push(existing.file_name()?.to_os_string());
                existing = existing.parent()?;
            }
        }
    };
    out.extend(rest.iter().rev());
    Some(out)
}

/// Moves every file under `from` to the same place under `into` (folders created as needed),
/// never replacing a file there: a name already taken gets `-1`, `-2`, ... before its
/// extension. On failure the files moved so far and the folders created are removed again
/// (they were written by this output), so the target is as it was. Returns the files added.
pub(super) fn move_files_into(from: &Path, into: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    list_files(from, &mut files).with_context(|| format!("reading {}", from.display()))?;
    files.sort();
    let (mut placed, mut created) = (Vec::new(), Vec::new());
    let result = (|| -> Result<()> {
        for file in &files {
            let relative = file.strip_prefix(from).expect("listed under `from`");
            let dest = into.join(relative);
            if let Some(parent) = dest.parent() {
                for dir in parent.ancestors().collect::<Vec<_>>().into_iter().rev() {
                    if !dir.as_os_str().is_empty() && !dir.exists() {
                        std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
                        created.push(dir.to_path_buf());
                    }
                }
            }
            placed.push(move_without_replacing(file, &dest)?);
        }
        Ok(())
    })();
    if let Err(e) = result {
        for file in &placed {
            let _ = std::fs::remove_file(file);
        }
        for dir in created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        return Err(e).with_context(|| format!("{} was left as it was", into.display()));
    }
    Ok(placed)
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            list_files(&entry.path(), out)?;
        } else {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// Moves `file` to `dest`, or to `dest` with `-N` before its extension when `dest` is taken.
/// A hard link then an unlink: the link fails on a taken name, so no check-then-rename race
/// can replace another writer's file.
fn move_without_replacing(file: &Path, dest: &Path) -> Result<PathBuf> {
    for n in 0..10_000 {
        let candidate = if n == 0 { dest.to_path_buf() } else { numbered(dest, n) };
        match std::fs::hard_link(file, &candidate) {
            Ok(()) => {
                std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // A file system without hard links: rename, after checking the name is free.
            Err(_) if !candidate.exists() => {
                std::fs::rename(file, &candidate)
                    .with_context(|| format!("moving {} to {}", file.display(), candidate.display()))?;
                return Ok(candidate);
            }
            Err(_) => continue,
        }
    }
    bail!("no free name for {} in its folder", dest.display())
}

/// `part.parquet` → `part-N.parquet`.
fn numbered(path: &Path, n: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!("{stem}-{n}{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_targets_are_read_as_datafusion_reads_them() {
        use OutputKind::*;
        assert_eq!(OutputKind::of_copy("out.parquet", false, None), File);
        assert_eq!(OutputKind::of_copy("out/", false, None), Folder);
        assert_eq!(OutputKind::of_copy("out", false, None), Folder);
        assert_eq!(OutputKind::of_copy("d.v1/out", false, None), Folder);
        assert_eq!(OutputKind::of_copy("out.parquet", true, None), Folder);
        assert_eq!(OutputKind::of_copy("out", false, Some(true)), File);
        assert_eq!(OutputKind::of_copy("out.parquet", false, Some(false)), Folder);
    }

    #[test]
    fn outputs_inside_inputs_and_kind_mismatches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("table");
        std::fs::create_dir(&table).unwrap();
        let file = dir.path().join("rows.parquet");
        std::fs::write(&file, "x").unwrap();
        let inputs = [table.clone(), file.clone()];
        let refused = |t: &Path, k| check_target(t, k, &inputs).unwrap_err().to_string();
        assert!(refused(&table, OutputKind::Folder).contains("lies inside, the input"));
        assert!(refused(&table.join("new/part.parquet"), OutputKind::File).contains("lies inside"));
        assert!(refused(&dir.path().join("other/../table/x"), OutputKind::Folder).contains("lies inside"));
        assert!(refused(&file, OutputKind::File).contains("the input"));
        assert!(refused(&table, OutputKind::File).contains("is a folder"));
        assert!(refused(&file, OutputKind::Folder).contains("is a file"));
        check_target(&dir.path().join("scored"), OutputKind::Folder, &inputs).unwrap();
        check_target(&dir.path().join("tables"), OutputKind::Folder, &inputs).unwrap();
    }

    #[test]
    fn folder_outputs_join_what_the_folder_holds_and_replace_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (from, into) = (dir.path().join("temp"), dir.path().join("out"));
        std::fs::create_dir_all(from.join("g=1")).unwrap();
        std::fs::write(from.join("g=1/part.parquet"), "new 1").unwrap();
        std::fs::write(from.join("top.parquet"), "new top").unwrap();
        std::fs::create_dir_all(into.join("g=1")).unwrap();
        std::fs::write(into.join("keep.txt"), "user").unwrap();
        std::fs::write(into.join("g=1/part.parquet"), "theirs").unwrap();
        let placed = move_files_into(&from, &into).unwrap();
        assert_eq!(placed, [into.join("g=1/part-1.parquet"), into.join("top.parquet")]);
        assert_eq!(std::fs::read_to_string(into.join("keep.txt")).unwrap(), "user");
        assert_eq!(std::fs::read_to_string(into.join("g=1/part.parquet")).unwrap(), "theirs");
        assert_eq!(std::fs::read_to_string(into.join("g=1/part-1.parquet")).unwrap(), "new 1");
    }
}
