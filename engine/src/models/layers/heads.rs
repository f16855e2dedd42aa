//! A projection's output split into attention heads, with the per-head norm and the rotary
//! embedding applied on the way.

use candle_core::{DType, Module, Result, Tensor};

use super::super::cpu;
use super::RmsNorm;

/// A projection's output `x` `[b, t, heads × d]` as attention's `[b, heads, t, d]`, with the
/// per-head RMSNorm (`norm`, Qwen3's q and k) and the rotary embedding (`rope`: cos and sin
/// `[t, d/2]`, or `[b, t, d/2]` per batch row) applied on the way: on CPU f32 one fused pass
/// (`cpu::fast_ops::split_heads_f32`), elsewhere candle's ops.
pub fn split_heads(
    x: &Tensor,
    (heads, d): (usize, usize),
    norm: Option<&RmsNorm>,
    rope: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && d % 2 == 0 {
        return cpu::fast_ops::split_heads_f32(x, (heads, d), norm.map(|n| (&n.weight, n.eps)), rope);
    }
    let (b, t, _) = x.dims3()?;
    let y = x.reshape((b, t, heads, d))?;
    let y = match norm {
        Some(norm) => norm.forward(&y)?,
        None => y,
    };
    let y = y.transpose(1, 2)?.contiguous()?;
    match rope {
        Some((cos, sin)) => candle_nn::rotary_emb::rope(&y, cos, sin),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::layers::RotaryEmbedding;

    /// The fused CPU f32 pass against candle's reshape, RmsNorm, transpose and rope (taken by
    /// f64): with and without the norm, with shared and per-batch-row rotary tables.
    #[test]
    fn split_heads_matches_candle_steps() {
        let device = candle_core::Device::Cpu;
        let (b, t, heads, d) = (2, 7, 3, 8);
        let x = Tensor::randn(0f32, 3.0, (b, t, heads * d), &device).unwrap();
        let weight = Tensor::randn(1f32, 0.5, d, &device).unwrap();
        let norm_in = |dtype| {
            let tensors = std::collections::HashMap::from([("norm.weight".to_string(), weight.clone())]);
            RmsNorm::load(d, 1e-6, candle_nn::VarBuilder::from_tensors(tensors, dtype, &device).pp("norm")).unwrap()
        };
        let norm = norm_in(candle_core::DType::F32);
        let rope = RotaryEmbedding::new(d, 10_000.0, None).unwrap();
        let (cos, sin) = rope.tables(t + 3, &device, candle_core::DType::F32).unwrap();
        let cos = cos.narrow(0, 0, t).unwrap();
        let sin = sin.narrow(0, 0, t).unwrap();
        let positions = Tensor::new(&[4u32, 1], &device).unwrap();
        let per_row = |v: &Tensor| v.index_select(&positions, 0).unwrap().unsqueeze(1).unwrap().contiguous().unwrap();
        let (cos_b, sin_b) = (per_row(&cos), per_row(&sin));
        let wide = |v: &Tensor| v.to_dtype(candle_core::DType::F64).unwrap();
        let x1 = x.narrow(1, 0, 1).unwrap().contiguous().unwrap();
        let norm64 = norm_in(candle_core::DType::F64);
        for with_norm in [false, true] {
            let (n, n64) = if with_norm { (Some(&norm), Some(&norm64)) } else { (None, None) };
            let cases = [
                (x.clone(), None),
                (x.clone(), Some((cos.clone(), sin.clone()))),
                (x1.clone(), Some((cos_b.clone(), sin_b.clone()))),
            ];
            for (input, tables) in cases {
                let ours = split_heads(&input, (heads, d), n, tables.as_ref().map(|(c, s)| (c, s))).unwrap();
                let tables64 = tables.as_ref().map(|(c, s)| (wide(c), wide(s)));
                let theirs =
                    split_heads(&wide(&input), (heads, d), n64, tables64.as_ref().map(|(c, s)| (c, s))).unwrap();
                assert_eq!(ours.dims(), theirs.dims());
                let diff = (ours - theirs.to_dtype(candle_core::DType::F32).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    diff < 1e-5,
                    "norm {with_norm}, tables {:?}: max |diff| {diff}",
                    tables.map(|(c, _)| c.dims().to_vec())
                );
            }
        }
    }
}
