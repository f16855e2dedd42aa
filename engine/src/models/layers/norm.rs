//! RMSNorm as transformers computes it.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// RMSNorm as transformers computes it: normalise in f32, cast back, then scale by the weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub(super) weight: Tensor,
    pub(super) eps: f32,
}

impl RmsNorm {
    pub fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(size, "weight")?, eps: eps as f32 })
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // On the GPU, candle's fused kernel (f32 accumulation, one rounding at the end instead
        // of transformers' two) saves eight full passes over the activations per norm; the
        // difference is far below bf16 resolution.
        if xs.dtype() == DType::F32 || xs.device().is_cuda() {
            return candle_nn::ops::rms_norm(&xs.contiguous()?, &self.weight, self.eps);
        }
        let x = xs.to_dtype(DType::F32)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(var + self.eps as f64)?.sqrt()?)?;
        normed.to_dtype(xs.dtype())?.broadcast_mul(&self.weight)
    }
}
