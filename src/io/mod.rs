//! Tables in and out of the app: formats by file name ([`format`]), `skyscore score`'s inputs
//! (JSONL, JSON arrays and Parquet, all as Arrow record batches so every format takes the same
//! path) and outputs, temporary files and Parquet metadata.

pub mod format;
pub mod input;
pub mod jsonl;
pub mod output;
pub mod parquet_metadata;
pub mod paths;

pub use input::{open_input, InputTable};
pub use output::{check_writable, OutputFormat, OutputWriter};
