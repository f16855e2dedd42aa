//! `skyscore._skyscore`: the native half of the Python package. The Python half
//! (`python/skyscore/`) holds the public API, its docstrings and the conversions pyarrow does
//! best; this module loads the engine ([`scorer`]), moves Arrow data across the C Data
//! Interface without copying ([`arrow`]), keeps Ctrl-C working while Rust runs
//! ([`interrupt`]), and hands the SQL functions to datafusion-python over its FFI ([`udf`]).

mod arrow;
mod interrupt;
mod report;
mod scorer;
mod udf;

use pyo3::prelude::*;

#[pymodule]
fn _skyscore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The datafusion-ffi version the UDFs are built with; datafusion-python must share its major.
    m.add("DATAFUSION_FFI_MAJOR", udf::FFI_MAJOR)?;
    m.add_class::<scorer::Engine>()?;
    m.add_class::<arrow::ArrowData>()?;
    m.add_class::<udf::ScalarUdf>()?;
    Ok(())
}
