//! CPU f32 elementwise steps where candle calls the scalar `expf` once per element, fused into
//! one pass each with an exp the compiler vectorises (AVX-512 where the CPU has it, picked at run
//! time): the gated MLP's `silu(gate) · up`, attention's scale + mask + softmax, and the per-head
//! steps between a projection and attention (split into heads, RMSNorm, rotary). Other dtypes and
//! devices use candle's ops.

use candle_core::{CpuStorage, CustomOp2, InplaceOp1, Layout, Result, Shape, Tensor};
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

/// Runs `body` compiled for AVX-512 when the CPU has it, else for AVX2 + FMA when it has those
/// (its loops then vectorise 16 or 8 lanes wide; the default x86-64 target stops at SSE2), else
/// as is. `body` must be `#[inline(always)]`. The arithmetic is the same on every path: Rust
/// never fuses a multiply and an add on its own, a fused one is asked for with `mul_add` (one
/// rounding on every path; without FMA hardware it is a slow library call), and the bodies fix
/// their reduction order, so results are bit-identical whichever path runs.
macro_rules! dispatch_simd {
    ($vis:vis $name:ident: fn($($arg:ident: $ty:ty),*) => $body:ident) => {
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512 (checked just above).
                    return unsafe { wide($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use dispatch_simd;

dispatch_simd!(silu_mul_chunk: fn(out: &mut [f32], gate: &[f32], up: &[f32]) => silu_mul_body);

#[inline(always)]
fn silu_mul_body(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_f32(-g)) * u;
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
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| silu_mul_chunk(o, g, u));
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

/// Which keys each row of attention scores sees (the additive mask's meaning, as limits).
#[derive(Clone, Copy)]
pub enum KeyLimits<'a> {
    /// Query row `r` of a block starting at position `first_row` sees keys `0..=first_row + r`.
    Causal { first_row: usize },
    /// One query row per batch row, batch row `i` seeing keys `0..=limits[i]`.
    PerBatchRow(&'a [u32]),
}

struct MaskedSoftmax<'a> {
    scale: f32,
    /// Query rows per (batch row, head).
    rows: usize,
    limits: KeyLimits<'a>,
}

impl InplaceOp1 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "skyscore-masked-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else { candle_core::bail!("skyscore masked softmax: f32 only") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("skyscore masked softmax: scores have to be contiguous")
        };
        let dims = layout.dims();
        let (keys, rows_per_batch) = (dims[dims.len() - 1], dims[1..dims.len() - 1].iter().product::<usize>());
        masked_softmax(&mut data[start..end], (keys, rows_per_batch), self.scale, self.rows, self.limits);
        Ok(())
    }
}

/// Attention probabilities from raw scores `[b, …, keys]` (contiguous CPU f32, `rows` query rows
/// per head), in place: `softmax(scale · s)` over each row's visible keys, 0 for the others.
/// The same numbers as scaling, adding the additive mask and candle's softmax, within an ulp.
pub fn masked_softmax_in_place(scores: &Tensor, scale: f32, rows: usize, limits: KeyLimits) -> Result<()> {
    scores.inplace_op1(&MaskedSoftmax { scale, rows, limits })
}

/// [`masked_softmax_in_place`] on the scores themselves: `keys` per row, `rows_per_batch` rows
/// per batch row (heads × query rows), `rows` query rows per head.
pub fn masked_softmax(
    scores: &mut [f32],
    (keys, rows_per_batch): (usize, usize),
    scale: f32,
    rows: usize,
    limits: KeyLimits,
) {
    scores.par_chunks_mut(keys).enumerate().for_each(|(i, row)| {
        let last = match limits {
            KeyLimits::Causal { first_row } => first_row + i % rows,
            KeyLimits::PerBatchRow(limits) => limits[i / rows_per_batch] as usize,
        };
        softmax_row(row, (last + 1).min(keys), scale)
    });
}

dispatch_simd!(pub(crate) softmax_row: fn(row: &mut [f32], visible: usize, scale: f32) => softmax_row_body);

#[inline(always)]
fn softmax_row_body(row: &mut [f32], visible: usize, scale: f32) {
    const LANES: usize = 16;
    let (live, hidden) = row.split_at_mut(visible);
    // Lane-wise max and sum (a plain fold over f32 does not vectorise).
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut chunks = live.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (m, v) in max.iter_mut().zip(chunk.iter_mut()) {
            *v *= scale;
            *m = if *v > *m { *v } else { *m };
        }
    }
    for (m, v) in max.iter_mut().zip(chunks.into_remainder()) {
        *v *= scale;
        *m = if *v > *m { *v } else { *m };
    }
    let max = max.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mut sum = [0f32; LANES];
    let mut chunks = live.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, v) in sum.iter_mut().zip(chunk.iter_mut()) {
            *v = exp_f32(*v - max);
            *s += *v;
        }
    }
    for (s, v) in sum.iter_mut().zip(chunks.into_remainder()) {
        *v = exp_f32(*v - max);
        *s += *v;
    }
    let sum: f32 = sum.iter().sum();
    for v in live.iter_mut() {
        *v /= sum;
    }
    hidden.fill(0.0);
}

/// The values of a contiguous CPU f32 tensor, borrowed through its storage guard:
/// `let (storage, layout) = t.storage_and_layout(); let values = cpu_f32(&storage, layout)?;`
pub fn cpu_f32<'a>(storage: &'a candle_core::Storage, layout: &Layout) -> Result<&'a [f32]> {
    let candle_core::Storage::Cpu(cpu) = storage else { candle_core::bail!("expected a CPU tensor") };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("expected a contiguous tensor") };
    Ok(&cpu.as_slice::<f32>()?[start..end])
}

/// A projection's output `x` `[b, t, heads × d]` (CPU, f32, even `d`) as attention's
/// `[b, heads, t, d]`, with the per-head RMSNorm (`norm`: weight and epsilon, Qwen3's q and k)
/// and the rotary embedding (`rope`: cos and sin `[t, d/2]`, or `[b, t, d/2]` per batch row)
/// applied on the way. One pass reads `x` and writes the result (candle's ops take three, each
/// writing a fresh buffer); the arithmetic is candle's, step for step.
pub fn split_heads_f32(
    x: &Tensor,
    (heads, d): (usize, usize),
    norm: Option<(&Tensor, f32)>,
    rope: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    if !(x.device().is_cpu() && x.dtype() == candle_core::DType::F32) || d % 2 != 0 {
        candle_core::bail!("split_heads_f32 takes a CPU f32 tensor and an even head size");
    }
    let norm = match norm {
        Some((weight, eps)) => Some((weight.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?, eps)),
        None => None,
    };
    let half = d / 2;
    let rope = match rope {
        Some((cos, sin)) => {
            let per_batch_row = cos.rank() == 3;
            let rows = if per_batch_row { cos.dim(1)? } else { cos.dim(0)? };
            let tables = if per_batch_row { b } else { 1 };
            if cos.elem_count() != tables * rows * half || sin.elem_count() != cos.elem_count() || rows < t {
                candle_core::bail!("rotary tables {:?} do not fit {t} positions of {d}", cos.dims());
            }
            let flat = |v: &Tensor| v.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>();
            Some((flat(cos)?, flat(sin)?, per_batch_row, rows))
        }
        None => None,
    };
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let x = cpu_f32(&storage, layout)?;
    if x.len() != b * t * heads * d {
        candle_core::bail!("split_heads: {:?} is not [{b}, {t}, {heads} × {d}]", layout.dims());
    }
    let mut out: Vec<f32> = Vec::with_capacity(x.len());
    out.spare_capacity_mut().par_chunks_mut(t * d).enumerate().for_each(|(bh, dst)| {
        let (bi, h) = (bh / heads, bh % heads);
        for (ti, row) in dst.chunks_exact_mut(d).enumerate() {
            let src = &x[((bi * t + ti) * heads + h) * d..][..d];
            match &norm {
                // candle's rms_norm: a sequential f32 sum of squares, then x / rms · w.
                Some((weight, eps)) => {
                    let sum2: f32 = src.iter().map(|v| v * v).sum();
                    let m = (sum2 / d as f32 + eps).sqrt();
                    for ((o, s), w) in row.iter_mut().zip(src).zip(weight) {
                        o.write(*s / m * *w);
                    }
                }
                None => {
                    for (o, s) in row.iter_mut().zip(src) {
                        o.write(*s);
                    }
                }
            }
            // SAFETY: every element of `row` was written just above.
            let row = unsafe { &mut *(row as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            if let Some((cos, sin, per_batch_row, rows)) = &rope {
                let at = if *per_batch_row { bi * rows + ti } else { ti } * half;
                let (cos, sin) = (&cos[at..at + half], &sin[at..at + half]);
                // candle's rope (halves, not interleaved pairs).
                for i in 0..half {
                    let (a, c) = (row[i], row[i + half]);
                    row[i] = a * cos[i] - c * sin[i];
                    row[i + half] = a * sin[i] + c * cos[i];
                }
            }
        }
    });
    // SAFETY: the chunks cover the whole buffer and every row of each was written.
    unsafe { out.set_len(x.len()) };
    Tensor::from_vec(out, (b, heads, t, d), &candle_core::Device::Cpu)
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

    /// Rows of very different sizes and ranges against scale, -inf mask and candle's softmax.
    #[test]
    fn masked_softmax_matches_candle() {
        let device = candle_core::Device::Cpu;
        let (rows, keys) = (3, 41);
        let raw: Vec<f32> = (0..2 * rows * keys).map(|i| ((i * 7919) % 1013) as f32 / 5.0 - 100.0).collect();
        let scores = Tensor::from_vec(raw.clone(), (2, rows, keys), &device).unwrap();
        masked_softmax_in_place(&scores, 0.7, rows, KeyLimits::Causal { first_row: 30 }).unwrap();
        let ours: Vec<f32> = scores.flatten_all().unwrap().to_vec1().unwrap();
        for (i, row) in raw.chunks(keys).enumerate() {
            let visible = 30 + i % rows + 1;
            let mut masked: Vec<f32> = row.iter().map(|v| v * 0.7).collect();
            masked[visible.min(keys)..].fill(f32::NEG_INFINITY);
            let theirs = candle_nn::ops::softmax_last_dim(&Tensor::new(masked.as_slice(), &device).unwrap()).unwrap();
            let theirs: Vec<f32> = theirs.to_vec1().unwrap();
            for (a, b) in ours[i * keys..(i + 1) * keys].iter().zip(&theirs) {
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "row {i}: {a} vs {b}");
            }
        }
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
