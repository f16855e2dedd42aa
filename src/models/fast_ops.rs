//! CPU f32 elementwise steps where candle calls the scalar `expf` once per element: the gated
//! MLP's `silu(gate) · up`, fused into one pass with an exp the compiler vectorises (one pass and
//! one buffer instead of candle's two of each). Other dtypes and devices use candle's ops.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `exp(x)` for f32 within ~2 ulp: `e^x = 2^n · e^r` with `n = round(x · log2 e)`, `r = x − n ln 2`
/// computed in two parts (Cody–Waite, so `r` keeps its precision for large `|x|`), and a degree-7
/// Taylor polynomial for `e^r` on `|r| ≤ ln 2 / 2`; 0 below the smallest normal result, clamped
/// at the largest. Branch-free, so loops over it vectorise.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75; // few mantissa bits: n · LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting it rounds to an integer
    const C: [f32; 8] = [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];
    let low = x < -87.336_54;
    let x = x.clamp(-87.336_54, 88.722_83);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = C[7];
    let p = p * r + C[6];
    let p = p * r + C[5];
    let p = p * r + C[4];
    let p = p * r + C[3];
    let p = p * r + C[2];
    let p = p * r + C[1];
    let p = p * r + C[0];
    // 2^n in two factors: n reaches 128 (x near the top of the range), one past the largest
    // exponent an f32 holds.
    let n = n as i32;
    let half = n >> 1;
    let scale = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    if low {
        0.0
    } else {
        p * scale(half) * scale(n - half)
    }
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "skyscore-silu-mul"
    }

    fn cpu_fwd(&self, gate: &CpuStorage, gl: &Layout, up: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(gate), CpuStorage::F32(up)) = (gate, up) else {
            candle_core::bail!("skyscore silu·up: f32 only")
        };
        let (Some((gs, ge)), Some((us, ue))) = (gl.contiguous_offsets(), ul.contiguous_offsets()) else {
            candle_core::bail!("skyscore silu·up: inputs have to be contiguous")
        };
        if gl.shape() != ul.shape() {
            candle_core::bail!("skyscore silu·up: shapes {:?} and {:?} differ", gl.shape(), ul.shape());
        }
        let (gate, up) = (&gate[gs..ge], &up[us..ue]);
        let mut out = vec![0f32; gate.len()];
        const CHUNK: usize = 16 * 1024;
        out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + exp_f32(-g)) * u;
            }
        });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// `silu(gate) · up`: one fused pass for contiguous f32 on CPU, candle's ops otherwise.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.device().is_cpu() && gate.dtype() == candle_core::DType::F32 && up.dtype() == candle_core::DType::F32 {
        return gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &SiluMul);
    }
    candle_nn::ops::silu(gate)? * up
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.72 {
            let (fast, exact) = (exp_f32(x), x.exp());
            worst = worst.max(((fast - exact) / exact).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "max relative error {worst}");
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn silu_mul_matches_candle_even_far_out() {
        let device = candle_core::Device::Cpu;
        let gate: Vec<f32> = (0..3 * 40_000usize).map(|i| ((i * 7919) % 4001) as f32 / 20.0 - 100.0).collect();
        let up: Vec<f32> = (0..3 * 40_000usize).map(|i| ((i * 104_729) % 997) as f32 / 99.7 - 5.0).collect();
        let (g, u) = (
            Tensor::from_vec(gate, (3, 40_000), &device).unwrap(),
            Tensor::from_vec(up, (3, 40_000), &device).unwrap(),
        );
        let ours: Vec<f32> = silu_mul(&g, &u).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let theirs: Vec<f32> =
            (candle_nn::ops::silu(&g).unwrap() * &u).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
