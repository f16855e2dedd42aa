//! Finding the SFT columns in a record batch and reading them as strings, whatever string
//! type they arrive as (Utf8, LargeUtf8, or Utf8View from Parquet).

use anyhow::{bail, Result};
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::record_batch::RecordBatch;

/// Which columns hold the Alpaca fields and the row id.
#[derive(Debug, Clone)]
pub struct ColumnNames {
    pub instruction: String,
    pub input: String,
    pub output: String,
    /// `Some` when the user named an id column (then it must exist); `None` uses `id` if present.
    pub id: Option<String>,
}

impl Default for ColumnNames {
    fn default() -> Self {
        Self { instruction: "instruction".into(), input: "input".into(), output: "output".into(), id: None }
    }
}

impl ColumnNames {
    /// Checks the schema up front so that a wrong file fails before the model loads.
    pub fn check(&self, schema: &Schema, file: &str) -> Result<()> {
        for (name, required) in [(&self.instruction, true), (&self.input, false), (&self.output, true)] {
            match schema.field_with_name(name) {
                Ok(f) if !is_string_like(f.data_type()) => {
                    bail!("{file}: column `{name}` has type {}; expected a string column", f.data_type())
                }
                Ok(_) => {}
                Err(_) if required => bail!(
                    "{file}: no column `{name}` (columns: {})",
                    schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                ),
                Err(_) => {}
            }
        }
        if let Some(id) = &self.id {
            if schema.field_with_name(id).is_err() {
                bail!("{file}: no id column `{id}`");
            }
        }
        Ok(())
    }

    /// The id column actually used, if any.
    pub fn id_column<'a>(&'a self, schema: &Schema) -> Option<&'a str> {
        match &self.id {
            Some(id) => Some(id.as_str()),
            None => schema.field_with_name("id").ok().map(|_| "id"),
        }
    }
}

fn is_string_like(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null)
}

/// A string column of any Arrow string type.
pub enum StrColumn<'a> {
    Utf8(&'a datafusion::arrow::array::StringArray),
    LargeUtf8(&'a datafusion::arrow::array::LargeStringArray),
    View(&'a datafusion::arrow::array::StringViewArray),
    /// An all-null column (JSON inference gives these when no row has a value).
    Null,
    /// The column does not exist (only allowed for `input`).
    Absent,
}

impl<'a> StrColumn<'a> {
    pub fn new(array: Option<&'a ArrayRef>) -> Result<Self> {
        let Some(array) = array else { return Ok(StrColumn::Absent) };
        Ok(match array.data_type() {
            DataType::Utf8 => StrColumn::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => StrColumn::LargeUtf8(array.as_string::<i64>()),
            DataType::Utf8View => StrColumn::View(array.as_string_view()),
            DataType::Null => StrColumn::Null,
            other => bail!("expected a string column, found {other}"),
        })
    }

    pub fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            StrColumn::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            StrColumn::LargeUtf8(a) => a.is_valid(i).then(|| a.value(i)),
            StrColumn::View(a) => a.is_valid(i).then(|| a.value(i)),
            StrColumn::Null | StrColumn::Absent => None,
        }
    }
}

/// The three SFT columns of one batch.
pub struct SftColumns<'a> {
    pub instruction: StrColumn<'a>,
    pub input: StrColumn<'a>,
    pub output: StrColumn<'a>,
}

impl<'a> SftColumns<'a> {
    pub fn new(batch: &'a RecordBatch, names: &ColumnNames) -> Result<Self> {
        let col = |n: &str| batch.column_by_name(n);
        Ok(Self {
            instruction: StrColumn::new(col(&names.instruction))?,
            input: StrColumn::new(col(&names.input))?,
            output: StrColumn::new(col(&names.output))?,
        })
    }
}
