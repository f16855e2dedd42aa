//! Where the model runs: device lists as the user writes them (`cpu`, `cuda:0,cuda:1`),
//! opening them, and telling an out-of-memory failure from other device errors.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// One device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The device when none is asked for: the first GPU when this build has CUDA and the
    /// driver sees one (an 8B model on CPU is rarely what a GPU build's user wants), else cpu.
    pub fn default_for_build() -> DeviceSpec {
        if candle_core::utils::cuda_is_available() && Device::new_cuda(0).is_ok() {
            tracing::info!("no device given: using cuda:0");
            DeviceSpec::Cuda(0)
        } else {
            DeviceSpec::Cpu
        }
    }

    pub fn open(&self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) if candle_core::utils::cuda_is_available() => {
                Device::new_cuda(*n).with_context(|| format!("opening {self}"))
            }
            DeviceSpec::Cuda(_) => {
                bail!("{self}: this skyscore was built without CUDA (build it with scripts/build-cuda.sh)")
            }
        }
    }
}

/// A non-empty list of devices of one kind: one model replica per entry. Parsed once where
/// the user gives it (a flag, the YAML config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct DeviceList(pub Vec<DeviceSpec>);

impl TryFrom<String> for DeviceList {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl FromStr for DeviceList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let devices = s.split(',').map(|d| d.trim().parse()).collect::<Result<Vec<DeviceSpec>, String>>()?;
        let cpus = devices.iter().filter(|d| **d == DeviceSpec::Cpu).count();
        if cpus != 0 && cpus != devices.len() {
            return Err(format!("device list `{s}` mixes cpu and cuda; use one kind"));
        }
        Ok(DeviceList(devices))
    }
}

impl fmt::Display for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", names.join(","))
    }
}

impl DeviceList {
    /// Whether the model runs on GPUs (bf16, token-budgeted batches, larger chunks).
    pub fn on_gpu(&self) -> bool {
        self.0.iter().any(|d| *d != DeviceSpec::Cpu)
    }

    pub fn default_for_build() -> Self {
        DeviceList(vec![DeviceSpec::default_for_build()])
    }
}

/// CUDA driver allocation failures and cuBLAS workspace failures: both leave the context
/// usable, so the batch can be retried in smaller parts. candle reports them only as text, so
/// this is the one place that reads it (the runner turns it into `EngineError::OutOfMemory`).
pub fn is_out_of_memory(e: &candle_core::Error) -> bool {
    let text = format!("{e:?}");
    text.contains("CUDA_ERROR_OUT_OF_MEMORY") || text.contains("CUBLAS_STATUS_ALLOC_FAILED")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip() {
        let list: DeviceList = "cuda:0, cuda:3".parse().unwrap();
        assert_eq!(list.0, [DeviceSpec::Cuda(0), DeviceSpec::Cuda(3)]);
        assert_eq!(list.to_string(), "cuda:0,cuda:3");
        assert!(list.on_gpu());
        assert!(!"cpu,cpu".parse::<DeviceList>().unwrap().on_gpu());
    }

    #[test]
    fn out_of_memory_is_told_apart() {
        let oom = candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into());
        assert!(is_out_of_memory(&oom));
        assert!(is_out_of_memory(&candle_core::Error::Msg("CUBLAS_STATUS_ALLOC_FAILED".into()).context("matmul")));
        assert!(!is_out_of_memory(&candle_core::Error::Msg("shape mismatch".into())));
    }
}
