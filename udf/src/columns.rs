//! Finding the SFT columns in a record batch and reading them as strings, whatever string
//! type they arrive as (Utf8, LargeUtf8, or Utf8View from Parquet).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Float32Array, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use skyscore_core::{Conversation, RowScore, ScoreRequest};

use crate::args::StrArg;

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
    /// `source` names the data in the message (a file, a table).
    pub fn check(&self, schema: &Schema, source: &str) -> Result<(), String> {
        for (name, required) in [(&self.instruction, true), (&self.input, false), (&self.output, true)] {
            match schema.field_with_name(name) {
                Ok(f) if !is_string_like(f.data_type()) => {
                    return Err(format!(
                        "{source}: column `{name}` has type {}; expected a string column",
                        f.data_type()
                    ))
                }
                Ok(_) => {}
                Err(_) if required => {
                    return Err(format!(
                        "{source}: no column `{name}` (columns: {})",
                        schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                    ))
                }
                Err(_) => {}
            }
        }
        if let Some(id) = &self.id {
            if schema.field_with_name(id).is_err() {
                return Err(format!("{source}: no id column `{id}`"));
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

/// The three SFT columns of one batch.
/// Strings are read with the UDF crate's [`StrArg`], so both front ends accept the same types.
pub struct SftColumns<'a> {
    pub instruction: StrArg<'a>,
    pub input: StrArg<'a>,
    pub output: StrArg<'a>,
}

impl<'a> SftColumns<'a> {
    pub fn new(batch: &'a RecordBatch, names: &ColumnNames) -> datafusion::common::Result<Self> {
        // A missing column (only `input` may be) reads as all NULL.
        let col = |name: &str| -> datafusion::common::Result<StrArg<'a>> {
            match batch.column_by_name(name) {
                Some(array) => Ok(StrArg::from_array(array, name)?),
                None => Ok(StrArg::Scalar(None)),
            }
        };
        Ok(Self { instruction: col(&names.instruction)?, input: col(&names.input)?, output: col(&names.output)? })
    }
}

/// The conversation of every row of `batch`, in order, or why a row has none: a NULL
/// instruction or output is a row error; a NULL or missing input is an empty one. Every front
/// end that scores tables (`skyscore score`, the Python package) reads rows this way.
pub fn batch_conversations<'a>(batch: &'a RecordBatch, names: &ColumnNames) -> Vec<Result<Conversation<'a>, String>> {
    let cols = match SftColumns::new(batch, names) {
        Ok(cols) => cols,
        // The schema is checked up front; a batch that still fails fails every row.
        Err(e) => return vec![Err(e.to_string()); batch.num_rows()],
    };
    (0..batch.num_rows())
        .map(|i| match (cols.instruction.get(i), cols.output.get(i)) {
            (Some(instruction), Some(output)) => {
                Ok(ScoreRequest::new(instruction, cols.input.get(i), output).conversation())
            }
            (None, _) => Err(format!("column `{}` is NULL", names.instruction)),
            (_, None) => Err(format!("column `{}` is NULL", names.output)),
        })
        .collect()
}

/// The columns a scored table gets beside its own (`skyscore score --keep-columns`, Python's
/// `score_table`).
pub const ADDED_COLUMNS: [&str; 3] = ["score", "num_tokens", "truncated"];

/// The first of [`ADDED_COLUMNS`] that `schema` already has (it would be shadowed).
pub fn added_column_clash(schema: &Schema) -> Option<&'static str> {
    ADDED_COLUMNS.into_iter().find(|c| schema.field_with_name(c).is_ok())
}

/// `input`'s fields followed by `score` (Float32), `num_tokens` (UInt32) and `truncated`
/// (Boolean), each NULL for a row without a score.
pub fn scored_fields(input: &Schema) -> Vec<Field> {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(ADDED_COLUMNS[0], DataType::Float32, true));
    fields.push(Field::new(ADDED_COLUMNS[1], DataType::UInt32, true));
    fields.push(Field::new(ADDED_COLUMNS[2], DataType::Boolean, true));
    fields
}

/// `batch`'s columns followed by the three of [`scored_fields`], one value per row of `rows`.
pub fn scored_columns(batch: &RecordBatch, rows: &[Option<RowScore>]) -> Vec<ArrayRef> {
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(rows.iter().map(|r| r.map(|r| r.score)).collect::<Float32Array>()));
    columns.push(Arc::new(rows.iter().map(|r| r.map(|r| r.tokens)).collect::<UInt32Array>()));
    columns.push(Arc::new(rows.iter().map(|r| r.map(|r| r.truncated)).collect::<BooleanArray>()));
    columns
}

/// "row N (id X)": how an error names row `i` of `batch`, N counting from the start of the
/// caller's data (`first_row` is the batch's first), X the id column's value when there is one.
pub fn row_label(batch: &RecordBatch, id_column: Option<&str>, first_row: usize, i: usize) -> String {
    let id = id_column
        .and_then(|c| batch.column_by_name(c))
        .and_then(|a| datafusion::arrow::util::display::array_value_to_string(a, i).ok());
    match id {
        Some(id) => format!("row {} (id {id})", first_row + i),
        None => format!("row {}", first_row + i),
    }
}
