//! The SwiGLU feed-forward block of Llama and Qwen3.

use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::super::cpu;
use super::{LinearKind, Proj};

/// The SwiGLU feed-forward block of Llama and Qwen3.
#[derive(Debug, Clone)]
pub struct GatedMlp {
    gate_up: GateUp,
    down_proj: Proj,
}

/// `silu(gate_proj(x)) · up_proj(x)`: two projections and a fused elementwise pass, or with the
/// bf16 kernel one product that writes the gated result directly.
#[derive(Debug, Clone)]
enum GateUp {
    Separate { gate_proj: Proj, up_proj: Proj },
    PackedBf16(Arc<cpu::PackedGated>),
}

impl GatedMlp {
    pub fn load(hidden: usize, intermediate: usize, bias: bool, vb: VarBuilder, kind: &LinearKind) -> Result<Self> {
        let gate_up = match kind {
            // The fused product has no bias term (no Llama or Qwen3 reward model has an MLP bias).
            LinearKind::PackedBf16(checkpoint) if !bias => {
                let (gate, up) = (vb.pp("gate_proj"), vb.pp("up_proj"));
                let fused = cpu::PackedGated::load(hidden, intermediate, &gate.prefix(), &up.prefix(), checkpoint)?;
                GateUp::PackedBf16(Arc::new(fused))
            }
            _ => GateUp::Separate {
                gate_proj: Proj::load(hidden, intermediate, bias, vb.pp("gate_proj"), kind)?,
                up_proj: Proj::load(hidden, intermediate, bias, vb.pp("up_proj"), kind)?,
            },
        };
        Ok(Self { gate_up, down_proj: Proj::load(intermediate, hidden, bias, vb.pp("down_proj"), kind)? })
    }
}

impl Module for GatedMlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = match &self.gate_up {
            GateUp::Separate { gate_proj, up_proj } => {
                cpu::fast_ops::silu_mul(&gate_proj.forward(xs)?, &up_proj.forward(xs)?)?
            }
            GateUp::PackedBf16(fused) => fused.forward(xs)?,
        };
        self.down_proj.forward(&hidden)
    }
}
