//! Reading UDF arguments as strings, row by row, without casting or copying: columns of
//! Utf8, LargeUtf8 or Utf8View (Parquet gives Utf8View, Ballista Utf8) and string literals.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, LargeStringArray, StringArray, StringViewArray,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_datafusion_err, exec_err, plan_err, DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;
use skyscore_core::ScorerError;

/// One string argument of a UDF call.
pub enum StrArg<'a> {
    Scalar(Option<&'a str>),
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    View(&'a StringViewArray),
}

impl<'a> StrArg<'a> {
    pub fn new(value: &'a ColumnarValue, name: &str) -> Result<Self> {
        match value {
            ColumnarValue::Scalar(s) => match s {
                ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                    Ok(StrArg::Scalar(v.as_deref()))
                }
                ScalarValue::Null => Ok(StrArg::Scalar(None)),
                other => exec_err!("argument `{name}` must be a string, got {}", other.data_type()),
            },
            ColumnarValue::Array(a) => Self::from_array(a, name),
        }
    }

    pub fn from_array(a: &'a ArrayRef, name: &str) -> Result<Self> {
        match a.data_type() {
            DataType::Utf8 => Ok(StrArg::Utf8(a.as_string::<i32>())),
            DataType::LargeUtf8 => Ok(StrArg::LargeUtf8(a.as_string::<i64>())),
            DataType::Utf8View => Ok(StrArg::View(a.as_string_view())),
            DataType::Null => Ok(StrArg::Scalar(None)),
            other => exec_err!("argument `{name}` must be a string, got {other}"),
        }
    }

    pub fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            StrArg::Scalar(v) => *v,
            StrArg::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            StrArg::LargeUtf8(a) => a.is_valid(i).then(|| a.value(i)),
            StrArg::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

/// Planning-time coercion shared by the UDFs: strings pass through unchanged (no casts),
/// NULL literals become Utf8, dictionaries of strings are unpacked, anything else is an error
/// that names the function and the argument.
pub fn coerce_string_args(function: &str, names: &[&str], arg_types: &[DataType]) -> Result<Vec<DataType>> {
    arg_types
        .iter()
        .zip(names)
        .map(|(t, name)| match t {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(t.clone()),
            DataType::Null => Ok(DataType::Utf8),
            DataType::Dictionary(_, v)
                if matches!(v.as_ref(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) =>
            {
                Ok(v.as_ref().clone())
            }
            other => plan_err!("{function}: argument `{name}` must be a string, got {other}"),
        })
        .collect()
}

/// The error of a call whose row could not be scored, in the batch's own row numbers (rows
/// with NULL arguments are not sent to the scorer, so its numbers differ) and with the start of
/// the row's text, since SQL has no row id to show.
pub fn score_error(
    function: &str,
    rows: &[usize],
    first_text: impl Fn(usize) -> String,
    e: ScorerError,
) -> DataFusionError {
    match e {
        ScorerError::Row { row, reason } => {
            let text: String = first_text(row).chars().take(60).collect();
            exec_datafusion_err!(
                "{function}: row {} of its batch (\"{text}…\"): {reason}",
                rows.get(row).copied().unwrap_or(row)
            )
        }
        other => exec_datafusion_err!("{function}: {other}"),
    }
}

/// The UDF result: `scores[k]` belongs to row `rows[k]`; every other row is NULL. A call whose
/// arguments were all literals returns a scalar.
pub fn scores_to_columnar(n: usize, rows: &[usize], scores: Vec<f32>, scalar: bool) -> ColumnarValue {
    let mut out: Vec<Option<f32>> = vec![None; n];
    for (&row, score) in rows.iter().zip(scores) {
        out[row] = Some(score);
    }
    if scalar {
        return ColumnarValue::Scalar(ScalarValue::Float32(out.first().copied().flatten()));
    }
    ColumnarValue::Array(Arc::new(Float32Array::from(out)))
}
