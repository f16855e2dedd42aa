//! `COPY ... TO` as a new user writes it, with nothing lost: file and folder targets (a path
//! ending with `/`, without an extension, `PARTITIONED BY`), an existing folder that keeps
//! every file it held, targets inside an input refused before the model loads, and no
//! temporary left behind by a failure. The same rules for `score --output`.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn model() -> String {
    model_dir("tiny-llama").to_str().unwrap().to_string()
}

fn sample() -> PathBuf {
    repo().join("sample_data/sft_sample.parquet")
}

/// Runs `skyscore -v sql --model tiny-llama -t sft=TABLE SQL` (`-v` logs the model's loading).
fn sql(table: &Path, query: &str) -> std::process::Output {
    skyscore(&["-v", "sql", "--model", &model(), "-t", &format!("sft={}", p(table)), "--no-progress", query])
}

/// Every name under `dir`, relative, sorted (folders end with `/`).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                out.push(format!("{name}/"));
                walk(root, &path, out);
            } else {
                out.push(name);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn no_temporaries(dir: &Path) {
    let left: Vec<String> = tree(dir).into_iter().filter(|n| n.contains(".skyscore-")).collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
}

/// `count(*)` and the sum of ids of the Parquet table at `path` (a file or a folder of files).
fn count_and_id_sum(path: &Path) -> String {
    let query = "SELECT count(*), sum(id) FROM t";
    let run = skyscore(&["sql", "-t", &format!("t={}", p(path)), "--format", "csv", query]);
    assert!(run.status.success(), "{}", stderr(&run));
    String::from_utf8_lossy(&run.stdout).lines().last().unwrap_or_default().to_string()
}

fn copy(select: &str, target: &Path, tail: &str) -> String {
    format!("COPY ({select}) TO '{}' STORED AS PARQUET{tail}", p(target))
}

const SCORED: &str = "SELECT id, length(output) % 3 AS g, skywork_score(instruction, input, output) AS s FROM sft";

/// The case of the issue: a partitioned COPY into a folder holding the user's file used to
/// empty the folder.
#[test]
fn a_partitioned_copy_into_an_existing_folder_keeps_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "the user's file").unwrap();
    let run = sql(&sample(), &copy(SCORED, &out, " PARTITIONED BY (g)"));
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "the user's file");
    let names = tree(&out);
    for g in 0..3 {
        assert!(names.iter().any(|n| n.starts_with(&format!("g={g}/")) && n.ends_with(".parquet")), "{names:?}");
    }
    no_temporaries(dir.path());
    // Every row once, in the partition folders (keep.txt is not a table file).
    let ids_320 = (0..320).sum::<u64>();
    let parts: Vec<String> = (0..3).map(|g| count_and_id_sum(&out.join(format!("g={g}")))).collect();
    let (rows, ids) = parts.iter().fold((0u64, 0u64), |(r, s), line| {
        let (a, b) = line.split_once(',').unwrap();
        (r + a.parse::<u64>().unwrap(), s + b.parse::<u64>().unwrap())
    });
    assert_eq!((rows, ids), (320, ids_320), "{parts:?}");

    // A second COPY into the same folder adds its files beside the first one's.
    let before = tree(&out);
    let run = sql(&sample(), &copy(SCORED, &out, " PARTITIONED BY (g)"));
    assert!(run.status.success(), "{}", stderr(&run));
    let after = tree(&out);
    assert!(before.iter().all(|n| after.contains(n)), "nothing replaced or removed: {before:?} -> {after:?}");
    assert_eq!(after.len(), before.len() + 3, "three new files: {after:?}");
}

/// DataFusion's folder forms: a trailing `/` and a path without an extension, new or not.
#[test]
fn folder_targets_become_folders_of_files() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["out2/", "newdir", "existing/"] {
        let target = dir.path().join(name);
        if name == "existing/" {
            std::fs::create_dir(&target).unwrap();
        }
        let run = sql(&sample(), &copy(SCORED, &target, ""));
        assert!(run.status.success(), "{name}: {}", stderr(&run));
        assert!(target.is_dir(), "{name} is a folder");
        assert!(tree(&target).iter().all(|n| n.ends_with(".parquet")), "{name}: {:?}", tree(&target));
        assert_eq!(count_and_id_sum(&target), format!("320,{}", (0..320).sum::<u64>()), "{name}");
    }
    no_temporaries(dir.path());
    // A file target stays one file, replaced when complete.
    let file = dir.path().join("one.parquet");
    std::fs::write(&file, "an earlier result").unwrap();
    let run = sql(&sample(), &copy(SCORED, &file, ""));
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(file.is_file());
    assert_eq!(count_and_id_sum(&file), format!("320,{}", (0..320).sum::<u64>()));
    no_temporaries(dir.path());
}

/// A target that is, or lies inside, an input table, or exists as the other kind, is refused
/// before the model loads, and nothing changes on disk.
#[test]
fn targets_that_would_change_an_input_are_refused_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    std::fs::create_dir(&table).unwrap();
    std::fs::copy(sample(), table.join("part-0.parquet")).unwrap();
    let file = dir.path().join("a.parquet");
    std::fs::write(&file, "not parquet").unwrap();
    let folder = dir.path().join("folder.parquet");
    std::fs::create_dir(&folder).unwrap();
    let before = tree(dir.path());
    for (target, tail, needle) in [
        (table.clone(), "", "lies inside, the input"),
        (table.join("scored"), "", "lies inside, the input"),
        (table.join("scored.parquet"), "", "lies inside, the input"),
        (table.join("part-0.parquet"), "", "the input"),
        (file.clone(), " PARTITIONED BY (g)", "is a file"),
        (folder.clone(), "", "is a folder"),
    ] {
        let run = sql(&table, &copy(SCORED, &target, tail));
        let err = stderr(&run);
        assert_eq!(run.status.code(), Some(1), "{}: {err}", target.display());
        assert!(err.contains(needle), "{}: expected `{needle}` in {err}", target.display());
        assert!(!err.contains("loading the model"), "refused before the model loads: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(tree(dir.path()), before, "{}: nothing changed", target.display());
    }
    // `score --output` refuses a folder before loading the model.
    let run = score(&model(), &sample(), &folder, &["--no-store", "-v"]);
    let err = stderr(&run);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(err.contains("is a folder") || err.contains("unknown output format"), "{err}");
    assert!(!err.contains("loading"), "{err}");
    assert_eq!(tree(dir.path()), before);
}

/// A COPY that fails while it runs (a cast that fails on the rows' text, after the model has
/// scored them) leaves no target, no temporary file or folder, and no folder it created for
/// the target.
#[test]
fn a_failing_copy_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let failing = "SELECT id, skywork_score(instruction, input, output) AS s, CAST(output AS INT) AS n FROM sft";
    let before = tree(dir.path());
    for target in [dir.path().join("new/sub/out.parquet"), dir.path().join("parts/"), dir.path().join("plain")] {
        let run = sql(&sample(), &copy(failing, &target, ""));
        let err = stderr(&run);
        assert_eq!(run.status.code(), Some(1), "{}: {err}", target.display());
        assert!(err.contains("Cannot cast") || err.contains("cast"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(tree(dir.path()), before, "{}: nothing left behind", target.display());
    }
}
