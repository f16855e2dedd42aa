//! Table formats by file name, in one place for every reader and writer (`skyscore score`'s
//! input and output, `skyscore sql`'s `-t` tables and `--output`).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Parquet,
    Csv,
    /// JSON: one object per line (`.jsonl`, `.ndjson`, most `.json`) or one array of objects.
    Json,
}

impl TableFormat {
    /// The format a file name says: `.parquet`/`.pq`, `.csv`, `.json`/`.jsonl`/`.ndjson`
    /// (case-insensitive). For a directory, the first file in it that has one of these.
    pub fn of_path(path: &Path) -> Option<Self> {
        Self::of_extension(&Self::table_file(path)?)
    }

    /// The file that names a table's format: the path itself, or for a directory its first
    /// file (by name) with a table extension.
    fn table_file(path: &Path) -> Option<PathBuf> {
        if !path.is_dir() {
            return Some(path.to_path_buf());
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        files.into_iter().find(|p| p.is_file() && Self::of_extension(p).is_some())
    }

    fn of_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" | "pq" => Some(TableFormat::Parquet),
            "csv" => Some(TableFormat::Csv),
            "json" | "jsonl" | "ndjson" => Some(TableFormat::Json),
            _ => None,
        }
    }

    /// The file's own extension with its dot (`.jsonl`), for readers that filter by it.
    pub fn dotted_extension(path: &Path) -> String {
        let file = Self::table_file(path).unwrap_or_else(|| path.to_path_buf());
        file.extension().and_then(|e| e.to_str()).map(|e| format!(".{e}")).unwrap_or_default()
    }
}

/// Whether a JSON file holds one array (its first non-blank byte is `[`) rather than one
/// object per line. An empty file is JSON lines with no rows; a directory is JSON lines.
pub fn json_is_array(path: &Path) -> Result<bool> {
    if path.is_dir() {
        return Ok(false);
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    for byte in BufReader::new(file).bytes() {
        let byte = byte.with_context(|| format!("reading {}", path.display()))?;
        if !byte.is_ascii_whitespace() {
            return Ok(byte == b'[');
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_extensions_and_json_arrays_from_their_first_byte() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TableFormat::of_path(Path::new("a.PARQUET")), Some(TableFormat::Parquet));
        assert_eq!(TableFormat::of_path(Path::new("a.ndjson")), Some(TableFormat::Json));
        assert_eq!(TableFormat::of_path(Path::new("a.txt")), None);
        let array = dir.path().join("a.json");
        std::fs::write(&array, "  \n[{\"a\": 1}]").unwrap();
        let lines = dir.path().join("b.json");
        std::fs::write(&lines, "{\"a\": 1}\n").unwrap();
        assert!(json_is_array(&array).unwrap());
        assert!(!json_is_array(&lines).unwrap());
        assert_eq!(TableFormat::of_path(dir.path()), Some(TableFormat::Json), "a directory: its first file");
        assert_eq!(TableFormat::dotted_extension(dir.path()), ".json");
    }
}
