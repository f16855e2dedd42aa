//! JSON Lines input, line by line, so that a bad line is named by its line number and, with
//! `--skip-invalid`, skipped and counted instead of failing the file. A line is bad when it is
//! not one JSON object (truncated, not UTF-8, a lone-surrogate escape such as `\ud800`, which
//! Python's `json.dumps` writes for broken text).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::reader::infer_json_schema_from_iterator;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::record_batch::RecordBatch;

/// What the first pass found: the schema of the good lines and how many there are.
pub struct JsonLines {
    pub schema: SchemaRef,
    pub rows: usize,
    pub batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send>,
    /// Bad lines skipped (`skip_invalid`); counted by the first pass.
    pub skipped: Arc<AtomicUsize>,
}

/// Why a line is not a row.
fn check_line(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 ({e})"))?;
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if v.is_object() => Ok(()),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not valid JSON ({e})")),
    }
}

/// Lines of the file with their 1-based numbers, blank ones left out.
fn lines(path: &Path) -> Result<impl Iterator<Item = Result<(usize, Vec<u8>)>>> {
    let reader = BufReader::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
    let p = path.to_path_buf();
    Ok(reader.split(b'\n').enumerate().filter_map(move |(i, line)| match line {
        Ok(l) if l.iter().all(u8::is_ascii_whitespace) => None,
        Ok(l) => Some(Ok((i + 1, l))),
        Err(e) => Some(Err(anyhow::Error::from(e).context(format!("reading {}", p.display())))),
    }))
}

fn bad_line(path: &Path, line: usize, reason: &str) -> String {
    format!("{}: line {line}: {reason} (use --skip-invalid to skip such lines)", path.display())
}

pub fn open(path: &Path, batch_rows: usize, skip_invalid: bool) -> Result<JsonLines> {
    // Pass 1: check every line, count the good ones, infer the schema from them.
    let (mut rows, mut skipped) = (0usize, 0usize);
    let mut read_error = None;
    let values = lines(path)?.filter_map(|item| {
        let (n, bytes) = match item {
            Ok(x) => x,
            Err(e) => {
                read_error = Some(e);
                return Some(Err(ArrowError::JsonError("read error".into())));
            }
        };
        match check_line(&bytes) {
            Ok(()) => {
                rows += 1;
                Some(
                    serde_json::from_slice::<serde_json::Value>(&bytes)
                        .map_err(|e| ArrowError::JsonError(e.to_string())),
                )
            }
            Err(reason) if skip_invalid => {
                tracing::warn!("{}: line {n}: {reason}; skipped", path.display());
                skipped += 1;
                None
            }
            Err(reason) => Some(Err(ArrowError::JsonError(bad_line(path, n, &reason)))),
        }
    });
    let inferred = infer_json_schema_from_iterator(values);
    if let Some(e) = read_error {
        return Err(e);
    }
    let schema = Arc::new(inferred.map_err(|e| match e {
        ArrowError::JsonError(msg) => anyhow::anyhow!(msg),
        other => anyhow::Error::from(other).context(format!("reading {}", path.display())),
    })?);

    // Pass 2: decode the good lines into batches; a value the decoder refuses names its lines.
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_batch_size(batch_rows.max(1))
        .with_coerce_primitive(true)
        .build_decoder()?;
    let mut source = lines(path)?;
    let p: PathBuf = path.to_path_buf();
    let batch_rows = batch_rows.max(1);
    let batches = std::iter::from_fn(move || {
        let mut in_batch = 0;
        let (mut first_line, mut last_line) = (0, 0);
        for item in source.by_ref() {
            let (n, bytes) = match item {
                Ok(x) => x,
                Err(e) => return Some(Err(e)),
            };
            if check_line(&bytes).is_err() {
                continue; // counted and reported by the first pass
            }
            if in_batch == 0 {
                first_line = n;
            }
            last_line = n;
            if let Err(e) = decoder.decode(&bytes) {
                return Some(Err(anyhow::anyhow!("{}: line {n}: {e}", p.display())));
            }
            in_batch += 1;
            if in_batch == batch_rows {
                break;
            }
        }
        match decoder.flush() {
            Ok(Some(batch)) => Some(Ok(batch)),
            Ok(None) => None,
            Err(e) => Some(Err(anyhow::anyhow!("{}: lines {first_line}–{last_line}: {e}", p.display()))),
        }
    });
    let skipped_lines = Arc::new(AtomicUsize::new(skipped));
    Ok(JsonLines { schema, rows, batches: Box::new(batches), skipped: skipped_lines })
}

/// Lines skipped so far.
pub fn skipped(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    const TEXT: &str = "{\"id\": 1, \"instruction\": \"a\"}\n\n{\"id\": 2, \"instruction\": \"b\"\n{\"id\": 3, \"instruction\": \"\\ud800\"}\n{\"id\": 4, \"instruction\": \"d\"}\n";

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let (_dir, path) = write(TEXT);
        let err = open(&path, 2, false).err().unwrap().to_string();
        assert!(err.contains("d.jsonl: line 3: not valid JSON"), "{err}");
    }

    /// What a line of a JSON Lines file is.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Kind {
        Row,
        /// Only whitespace: not a row and not an error.
        Blank,
        Bad,
    }

    /// One line of a JSON Lines file as users' files have them: a good row, an empty line, a
    /// truncated row, arbitrary text, another JSON value; with what it is. Arbitrary text is
    /// classified as a JSON parser sees it (`{}` is a row, spaces are blank).
    fn any_line() -> impl proptest::strategy::Strategy<Value = (String, Kind)> {
        use proptest::prelude::*;
        let classify = |t: String| {
            let kind = if t.trim().is_empty() {
                Kind::Blank
            } else if serde_json::from_str::<serde_json::Value>(&t).is_ok_and(|v| v.is_object()) {
                Kind::Row
            } else {
                Kind::Bad
            };
            (t, kind)
        };
        prop_oneof![
            ("\\PC{0,30}", "\\PC{0,30}").prop_map(|(i, o)| {
                (serde_json::json!({"instruction": i, "input": "", "output": o}).to_string(), Kind::Row)
            }),
            Just((String::new(), Kind::Blank)),
            "\\PC{0,30}".prop_map(|t| (format!("{{\"instruction\": \"{}", t.replace(['"', '\\'], "")), Kind::Bad)),
            "\\PC{1,40}".prop_map(classify),
            Just(("[1, 2]".to_string(), Kind::Bad)),
            Just(("42".to_string(), Kind::Bad)),
        ]
    }

    /// Every batch of a table read to the end; an error fails the test (none may turn into
    /// zero rows).
    fn read_all(table: JsonLines) -> Result<usize> {
        let mut rows = 0;
        for batch in table.batches {
            rows += batch?.num_rows();
        }
        Ok(rows)
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 64,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(2026),
            ..Default::default()
        })]

        /// Any file, both ways: without `skip_invalid`, every row when every line is good, else
        /// an error naming the first bad line; with it, every good row read and every bad line
        /// counted. Never a panic.
        #[test]
        fn any_lines_give_every_row_or_name_the_first_bad_line(lines in proptest::collection::vec(any_line(), 0..10)) {
            let text: String = lines.iter().map(|(l, _)| format!("{l}\n")).collect();
            let (_dir, path) = write(&text);
            let good = lines.iter().filter(|(_, k)| *k == Kind::Row).count();
            let bad = lines.iter().filter(|(_, k)| *k == Kind::Bad).count();
            match (lines.iter().position(|(_, k)| *k == Kind::Bad), open(&path, 3, false)) {
                (None, Ok(table)) => {
                    proptest::prop_assert_eq!(table.rows, good);
                    proptest::prop_assert_eq!(read_all(table).map_err(|e| format!("{e:#}")), Ok(good));
                }
                (None, Err(e)) => proptest::prop_assert!(false, "no bad line, yet: {:#}", e),
                (Some(first), Ok(_)) => proptest::prop_assert!(false, "line {} is bad, yet the file opened", first + 1),
                (Some(first), Err(e)) => {
                    let e = format!("{e:#}");
                    let named = format!("d.jsonl: line {}: ", first + 1);
                    proptest::prop_assert!(e.contains(&named), "expected `{}` in {}", named, e);
                }
            }
            let table = open(&path, 3, true).map_err(|e| format!("{e:#}"));
            proptest::prop_assert!(table.is_ok(), "skip_invalid opens every file: {:?}", table.as_ref().err());
            let table = table.unwrap();
            proptest::prop_assert_eq!((table.rows, skipped(&table.skipped)), (good, bad));
            proptest::prop_assert_eq!(read_all(table).map_err(|e| format!("{e:#}")), Ok(good));
        }
    }

    #[test]
    fn skip_invalid_skips_and_counts_bad_lines() {
        let (_dir, path) = write(TEXT);
        let table = open(&path, 1, true).unwrap();
        assert_eq!((table.rows, skipped(&table.skipped)), (2, 2), "lines 3 (truncated) and 4 (lone surrogate)");
        let batches: Vec<RecordBatch> = table.batches.collect::<Result<_>>().unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        assert_eq!(batches.len(), 2, "batches of one row");
    }
}
