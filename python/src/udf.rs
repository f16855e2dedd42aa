//! The SQL functions for datafusion-python: each crosses as a `datafusion_ffi` FFI_ScalarUDF
//! in a PyCapsule named `datafusion_scalar_udf`, which `datafusion.udf(obj)` accepts.
//!
//! Neither side checks versions, and a UDF built against another DataFusion major crashes at
//! query time; so the export itself refuses a datafusion-python whose major differs from the
//! datafusion-ffi this module was built with.

use std::ffi::CStr;
use std::sync::Arc;

use datafusion::logical_expr::ScalarUDF;
use datafusion_ffi::udf::FFI_ScalarUDF;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

/// The major version of `datafusion-ffi` in Cargo.toml (pinned to =55.2.0, the version in the
/// datafusion-python 55.0.0 wheel).
pub const FFI_MAJOR: u32 = 55;
const CAPSULE: &CStr = c"datafusion_scalar_udf";

#[pyclass(frozen, module = "skyscore._skyscore")]
pub struct ScalarUdf {
    udf: Arc<ScalarUDF>,
}

impl ScalarUdf {
    pub fn new(udf: ScalarUDF) -> Self {
        Self { udf: Arc::new(udf) }
    }
}

#[pymethods]
impl ScalarUdf {
    #[getter]
    fn name(&self) -> String {
        self.udf.name().to_string()
    }

    fn __repr__(&self) -> String {
        format!("<skyscore SQL function {}>", self.udf.name())
    }

    /// datafusion-python's FFI entry point (`datafusion.udf(obj)` calls it).
    fn __datafusion_scalar_udf__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        check_datafusion_version(py)?;
        PyCapsule::new_with_value(py, FFI_ScalarUDF::from(self.udf.clone()), CAPSULE)
    }
}

/// Refuses a datafusion-python whose major version is not [`FFI_MAJOR`].
pub fn check_datafusion_version(py: Python<'_>) -> PyResult<()> {
    let version: String = py.import("datafusion")?.getattr("__version__")?.extract()?;
    let major = version.split('.').next().and_then(|m| m.parse::<u32>().ok());
    if major != Some(FFI_MAJOR) {
        return Err(PyRuntimeError::new_err(format!(
            "skyscore's SQL functions are built for datafusion-python {FFI_MAJOR}.x (datafusion-ffi {FFI_MAJOR}), \
             but this environment has datafusion {version}; a UDF crossing between majors would crash. \
             Install a matching one: pip install 'skyscore[datafusion]' (datafusion>={FFI_MAJOR},<{})",
            FFI_MAJOR + 1
        )));
    }
    Ok(())
}
