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

// The Rust side of the module allocates through mimalloc (Python's own objects do not). Measured:
// with glibc's allocator the binding scored 22% slower than the CLI (llama-bench, AVX2 EPYC).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's option setter (exported by the C library the `mimalloc` crate links).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_t`.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

#[pymodule]
fn _skyscore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // As the CLI does (src/main.rs): keep freed activation memory instead of returning it to
    // the kernel after 10 ms; the next batch would pay for zeroed pages again.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options atomically.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The datafusion-ffi version the UDFs are built with; datafusion-python must share its major.
    m.add("DATAFUSION_FFI_MAJOR", udf::FFI_MAJOR)?;
    m.add_class::<scorer::Engine>()?;
    m.add_class::<arrow::ArrowData>()?;
    m.add_class::<udf::ScalarUdf>()?;
    Ok(())
}
