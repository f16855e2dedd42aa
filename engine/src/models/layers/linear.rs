//! How a decoder's weights are held and applied: the projections (candle's `Linear`, the CPU
//! f32 form, the bf16 kernel's packed weights) and the token embedding table.

use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{linear_b, Linear, VarBuilder};

use super::super::cpu;

/// How a decoder's projections (attention and MLP) hold their weights.
#[derive(Clone)]
pub enum LinearKind {
    /// candle tensors in the VarBuilder's dtype (GPUs, CPU f16, candle's CPU bf16).
    Dense,
    /// bf16, packed for the AVX512-BF16 kernel straight from the checkpoint's memory-mapped
    /// files; activations and everything else in f32.
    PackedBf16(Arc<MmapedSafetensors>),
    /// CPU f32: projections transposed straight from the checkpoint's memory-mapped files into
    /// [`cpu::CpuLinear`]'s layout, embedding rows read from them. With `round_bf16`
    /// (`--dtype bf16` on a CPU without AVX512-BF16) those weights are rounded to bf16 on the way
    /// and multiplied in f32 (no CPU without bf16 instructions multiplies bf16 faster than f32),
    /// so bf16 runs at f32's speed with bf16's weights.
    MappedF32 { checkpoint: Arc<MmapedSafetensors>, round_bf16: bool },
}

impl std::fmt::Debug for LinearKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinearKind::Dense => "Dense",
            LinearKind::PackedBf16(_) => "PackedBf16",
            LinearKind::MappedF32 { round_bf16: false, .. } => "MappedF32",
            LinearKind::MappedF32 { round_bf16: true, .. } => "MappedF32 (bf16-rounded)",
        })
    }
}

/// The token embedding table: a candle tensor, or on CPU rows read straight from the
/// memory-mapped checkpoint (a batch looks up a few thousand rows; copying the table at load
/// would fault in fresh pages for all of it: 622 MB in f32 for Qwen3's 151,936 × 1,024).
#[derive(Clone)]
pub enum TokenEmbedding {
    Table(candle_nn::Embedding),
    /// Rows of `name` in the checkpoint in f32; with `round_bf16` rounded to bf16 as the bf16
    /// model's own table would be.
    Mapped {
        checkpoint: Arc<MmapedSafetensors>,
        name: String,
        hidden: usize,
        round_bf16: bool,
    },
}

impl std::fmt::Debug for TokenEmbedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenEmbedding::Table(table) => f.debug_tuple("Table").field(table).finish(),
            TokenEmbedding::Mapped { name, hidden, round_bf16, .. } => f
                .debug_struct("Mapped")
                .field("name", name)
                .field("hidden", hidden)
                .field("round_bf16", round_bf16)
                .finish(),
        }
    }
}

impl TokenEmbedding {
    pub fn load(vocab: usize, hidden: usize, vb: VarBuilder, kind: &LinearKind) -> Result<Self> {
        let (checkpoint, round_bf16) = match kind {
            LinearKind::Dense => return Ok(Self::Table(candle_nn::embedding(vocab, hidden, vb)?)),
            LinearKind::PackedBf16(checkpoint) => (checkpoint, true),
            LinearKind::MappedF32 { checkpoint, round_bf16 } => (checkpoint, *round_bf16),
        };
        let name = format!("{}.weight", vb.prefix());
        cpu::check_mapped_embedding(checkpoint, &name, hidden, vocab)?;
        Ok(Self::Mapped { checkpoint: checkpoint.clone(), name, hidden, round_bf16 })
    }
}

impl Module for TokenEmbedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            TokenEmbedding::Table(table) => table.forward(ids),
            TokenEmbedding::Mapped { checkpoint, name, hidden, round_bf16 } => {
                cpu::mapped_embedding(checkpoint, name, *hidden, ids, *round_bf16)
            }
        }
    }
}

/// A projection: candle's `Linear`, its CPU f32 form, or the bf16 kernel's packed weights.
#[derive(Debug, Clone)]
pub enum Proj {
    Dense(Linear),
    /// CPU f32, batch-invariant (see [`cpu::CpuLinear`]).
    CpuF32(cpu::CpuLinear),
    PackedBf16(Arc<cpu::PackedLinear>),
}

impl Proj {
    pub fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder, kind: &LinearKind) -> Result<Self> {
        match kind {
            LinearKind::PackedBf16(checkpoint) => {
                let packed = cpu::PackedLinear::load(in_dim, out_dim, bias, vb, checkpoint)?;
                Ok(Proj::PackedBf16(Arc::new(packed)))
            }
            LinearKind::MappedF32 { checkpoint, round_bf16 } => {
                let bias = if bias {
                    Some(vb.get_with_hints_dtype(out_dim, "bias", Default::default(), DType::F32)?)
                } else {
                    None
                };
                let name = format!("{}.weight", vb.prefix());
                let linear = cpu::CpuLinear::from_checkpoint(checkpoint, &name, (in_dim, out_dim), bias, *round_bf16)?;
                Ok(Proj::CpuF32(linear))
            }
            LinearKind::Dense => {
                let linear = linear_b(in_dim, out_dim, bias, vb)?;
                if linear.weight().device().is_cpu() && linear.weight().dtype() == DType::F32 {
                    // A CPU f32 model built from tensors rather than a checkpoint (tests).
                    return Ok(Proj::CpuF32(cpu::CpuLinear::new(linear)?));
                }
                Ok(Proj::Dense(linear))
            }
        }
    }
}

impl Module for Proj {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Proj::Dense(linear) => linear.forward(xs),
            Proj::CpuF32(linear) => linear.forward(xs),
            Proj::PackedBf16(packed) => packed.forward(xs),
        }
    }
}
