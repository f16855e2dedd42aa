//! Arrow across the language boundary through the Arrow PyCapsule Interface: record batches
//! come in from anything with `__arrow_c_array__` (a pyarrow RecordBatch), and results go out
//! as [`ArrowData`], which pyarrow imports with `pa.record_batch(..)` / `pa.array(..)`.
//! Buffers are shared, never copied.

use std::ffi::CStr;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StructArray};
use datafusion::arrow::ffi::{from_ffi, to_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

const SCHEMA: &CStr = c"arrow_schema";
const ARRAY: &CStr = c"arrow_array";

/// A record batch from an object with `__arrow_c_array__` that exports a struct array.
pub fn import_batch(obj: &Bound<'_, PyAny>) -> PyResult<RecordBatch> {
    if !obj.hasattr("__arrow_c_array__")? {
        return Err(PyTypeError::new_err("expected an Arrow record batch (an object with __arrow_c_array__)"));
    }
    let (schema, array): (Bound<'_, PyCapsule>, Bound<'_, PyCapsule>) =
        obj.call_method0("__arrow_c_array__")?.extract()?;
    let schema = schema.pointer_checked(Some(SCHEMA))?.cast::<FFI_ArrowSchema>();
    let array = array.pointer_checked(Some(ARRAY))?.cast::<FFI_ArrowArray>();
    // SAFETY: the capsules hold an ArrowSchema and an ArrowArray (their names say so, checked
    // above). `from_raw` moves the array out and leaves a released one behind, so the capsule's
    // destructor will not release it a second time; the schema is only borrowed.
    let data = unsafe {
        let array = FFI_ArrowArray::from_raw(array.as_ptr());
        from_ffi(array, schema.as_ref())
    }
    .map_err(|e| PyValueError::new_err(format!("importing an Arrow batch: {e}")))?;
    let array = StructArray::from(data);
    if array.null_count() > 0 {
        return Err(PyValueError::new_err("an Arrow batch with NULL rows at the top level cannot be scored"));
    }
    Ok(RecordBatch::from(array))
}

/// An Arrow array (or a record batch, as a struct array) handed to Python.
#[pyclass(frozen, module = "skyscore._skyscore")]
pub struct ArrowData {
    array: ArrayRef,
}

impl ArrowData {
    pub fn array(array: ArrayRef) -> Self {
        Self { array }
    }

    pub fn batch(batch: RecordBatch) -> Self {
        Self { array: std::sync::Arc::new(StructArray::from(batch)) }
    }
}

#[pymethods]
impl ArrowData {
    /// The Arrow PyCapsule Interface: `(schema capsule, array capsule)`. A requested schema is
    /// not honoured (the data is returned as it is, which the interface allows).
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyCapsule>, Bound<'py, PyCapsule>)> {
        let _ = requested_schema;
        let (array, schema) =
            to_ffi(&self.array.to_data()).map_err(|e| PyValueError::new_err(format!("exporting Arrow data: {e}")))?;
        Ok((PyCapsule::new_with_value(py, schema, SCHEMA)?, PyCapsule::new_with_value(py, array, ARRAY)?))
    }

    fn __len__(&self) -> usize {
        self.array.len()
    }
}
