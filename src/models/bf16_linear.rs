//! Linear layers in bf16 on CPUs with AVX512-BF16 (`vdpbf16ps`: 32 bf16 products summed into 16
//! f32 lanes per instruction): weights packed once at load, activations rounded to bf16 per
//! call, f32 accumulation and f32 out. candle's own CPU bf16 matmul widens everything to f32 and
//! is slower than f32; this path is ~1.7× faster than f32 (gemm crate) on the shapes of the
//! reward models (measured in bench/README.md). CPUs without the instruction keep candle's path.

use std::arch::x86_64::*;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use half::bf16;
use rayon::prelude::*;

/// Rows of the activation per micro-tile.
const MR: usize = 8;
/// 16-column panels per micro-tile: MR × NR accumulators (24 of the 32 zmm registers).
const NR: usize = 3;
/// Rows per parallel work item.
const MC: usize = 64;
/// Panel groups (NR × 16 columns) per parallel work item.
const NC_GROUPS: usize = 8;

/// Whether this CPU runs the kernel.
pub fn supported() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// `y = x Wᵀ (+ b)` with W `[out, in]` packed for the kernel: panels of 16 output columns, each
/// `[in/2][16]` u32 holding the bf16 pair (W[c, 2q], W[c, 2q+1]) of column c in lane c.
#[derive(Debug)]
pub struct Bf16Linear {
    panels: Vec<u32>,
    /// Input features (k) and their pair count (k rounded up, halved).
    k: usize,
    pairs: usize,
    /// Output features.
    n: usize,
    bias: Option<Tensor>,
}

impl Bf16Linear {
    /// Loads `weight` (packed straight from the memory-mapped checkpoint: no f32 or bf16 copy of
    /// the whole matrix on the way, which on a VM costs more in fresh-page zeroing than the
    /// conversion itself) and `bias` (f32) under `vb`.
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
        checkpoint: &MmapedSafetensors,
    ) -> Result<Self> {
        let name = format!("{}.weight", vb.prefix());
        let view = checkpoint.get(&name)?;
        if view.shape() != [out_dim, in_dim] {
            candle_core::bail!("{name}: shape {:?}, expected [{out_dim}, {in_dim}]", view.shape());
        }
        let bias =
            if bias { Some(vb.get_with_hints_dtype(out_dim, "bias", Default::default(), DType::F32)?) } else { None };
        let (bytes, dtype) = (view.data(), view.dtype());
        let width = match dtype {
            safetensors::Dtype::F32 => 4,
            safetensors::Dtype::BF16 | safetensors::Dtype::F16 => 2,
            other => candle_core::bail!("{name}: weights of dtype {other:?} are not supported"),
        };
        // One row of the weight as bf16 bits, converted in a tight loop per dtype.
        let row = |col: usize, out: &mut [u16]| {
            let src = &bytes[col * in_dim * width..(col + 1) * in_dim * width];
            match dtype {
                safetensors::Dtype::F32 => {
                    for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                        *o = bf16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_bits();
                    }
                }
                safetensors::Dtype::F16 => {
                    for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                        *o = bf16::from_f32(half::f16::from_le_bytes([b[0], b[1]]).to_f32()).to_bits();
                    }
                }
                _ => {
                    for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                        *o = u16::from_le_bytes([b[0], b[1]]);
                    }
                }
            }
        };
        Ok(Self::pack_rows(out_dim, in_dim, bias, row))
    }

    /// Packs a row-major `[n, k]` bf16 weight (the tests' way in; models load from checkpoints).
    #[cfg(test)]
    pub fn pack(weight: &[bf16], n: usize, k: usize, bias: Option<Tensor>) -> Self {
        assert_eq!(weight.len(), n * k, "weight of {n}×{k}");
        Self::pack_rows(n, k, bias, |col, out| {
            for (o, w) in out.iter_mut().zip(&weight[col * k..(col + 1) * k]) {
                *o = w.to_bits();
            }
        })
    }

    /// Packs the `[n, k]` weight whose row `col` `row(col, out)` writes as bf16 bits: per panel,
    /// its 16 rows into a scratch buffer, then interleaved pair by pair in write order.
    fn pack_rows(n: usize, k: usize, bias: Option<Tensor>, row: impl Fn(usize, &mut [u16]) + Sync) -> Self {
        let pairs = k.div_ceil(2);
        let panel_count = n.div_ceil(16);
        let mut panels = vec![0u32; panel_count * pairs * 16];
        panels.par_chunks_mut(pairs * 16).enumerate().for_each(|(p, panel)| {
            // 16 rows of 2·pairs bf16 (the odd tail stays 0).
            let mut rows = vec![0u16; 16 * 2 * pairs];
            for (lane, out) in rows.chunks_mut(2 * pairs).enumerate() {
                if p * 16 + lane < n {
                    row(p * 16 + lane, &mut out[..k]);
                }
            }
            for (q, slot) in panel.chunks_mut(16).enumerate() {
                for (lane, v) in slot.iter_mut().enumerate() {
                    let r = &rows[lane * 2 * pairs..];
                    *v = r[2 * q] as u32 | (r[2 * q + 1] as u32) << 16;
                }
            }
        });
        Self { panels, k, pairs, n, bias }
    }

    /// `[m, k]` f32 rows → `[m, n]` f32.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert!(supported(), "Bf16Linear needs AVX512-BF16");
        assert_eq!(x.len(), m * self.k);
        let (k, pairs, n) = (self.k, self.pairs, self.n);
        // Activations as bf16 pairs, rows padded to an even length.
        let mut a = vec![0u32; m * pairs];
        a.par_chunks_mut(pairs).zip(x.par_chunks(k)).for_each(|(out, row)| {
            // SAFETY: `supported()` was checked above.
            unsafe { round_row(row, out) }
        });
        let mut y = vec![0f32; m * n];
        let groups = n.div_ceil(16).div_ceil(NR);
        let items: Vec<(usize, usize)> =
            (0..m.div_ceil(MC)).flat_map(|rb| (0..groups.div_ceil(NC_GROUPS)).map(move |gb| (rb, gb))).collect();
        let out = SendPtr(y.as_mut_ptr());
        items.into_par_iter().for_each(|(rb, gb)| {
            let out = &out;
            let rows = rb * MC..((rb + 1) * MC).min(m);
            for g in gb * NC_GROUPS..((gb + 1) * NC_GROUPS).min(groups) {
                let first_panel = g * NR;
                let cols = first_panel * 16..(first_panel * 16 + NR * 16).min(n);
                for r in rows.clone().step_by(MR) {
                    let tile_rows = (rows.end - r).min(MR);
                    // SAFETY: `supported()` was checked; each work item writes its own rows ×
                    // columns of `y`, which outlives the parallel loop; every read is in bounds
                    // (panels and pair rows are padded).
                    unsafe {
                        tile(
                            a.as_ptr().add(r * pairs),
                            pairs,
                            tile_rows,
                            self.panels.as_ptr().add(first_panel * pairs * 16),
                            out.0.add(r * n + cols.start),
                            n,
                            cols.len(),
                        )
                    }
                }
            }
        });
        y
    }
}

impl Module for Bf16Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let k = *dims.last().expect("a linear layer's input has a feature dimension");
        if k != self.k {
            candle_core::bail!("Bf16Linear: input has {k} features, the weight {}", self.k);
        }
        let m = xs.elem_count() / k;
        // Read the activations where they are (a copy would cost page faults on a fresh buffer).
        let xs = xs.to_dtype(DType::F32)?.contiguous()?;
        let y = {
            let (storage, layout) = xs.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else { candle_core::bail!("Bf16Linear runs on CPU") };
            let (start, end) = layout.contiguous_offsets().expect("made contiguous above");
            self.matmul(&cpu.as_slice::<f32>()?[start..end], m)
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.n;
        let y = Tensor::from_vec(y, out_dims, &Device::Cpu)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

struct SendPtr(*mut f32);
// SAFETY: the work items write disjoint regions of the buffer behind the pointer.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// One row of f32 → bf16 pairs (round to nearest even, as transformers' `.to(bfloat16)`).
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_row(row: &[f32], out: &mut [u32]) {
    let halves = out.as_mut_ptr() as *mut u16;
    let mut i = 0;
    while i + 16 <= row.len() {
        let v = _mm512_loadu_ps(row.as_ptr().add(i));
        let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        _mm256_storeu_si256(halves.add(i) as *mut __m256i, b);
        i += 16;
    }
    for (j, v) in row.iter().enumerate().skip(i) {
        *halves.add(j) = bf16::from_f32(*v).to_bits();
    }
}

/// `rows` (≤ MR) × `cols` (≤ NR × 16) of the output: each accumulator is 16 columns of one row,
/// each step one bf16 pair of the row broadcast against one packed pair per column.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(a: *const u32, pairs: usize, rows: usize, b: *const u32, out: *mut f32, ldo: usize, cols: usize) {
    let panels = cols.div_ceil(16);
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    for q in 0..pairs {
        let mut bv: [__m512bh; NR] = std::mem::zeroed();
        for (j, v) in bv.iter_mut().enumerate().take(panels) {
            *v = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add((j * pairs + q) * 16) as *const _));
        }
        for (r, row_acc) in acc.iter_mut().enumerate().take(rows) {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * pairs + q) as i32));
            for j in 0..NR {
                row_acc[j] = _mm512_dpbf16_ps(row_acc[j], av, bv[j]);
            }
        }
    }
    for (r, row_acc) in acc.iter().enumerate().take(rows) {
        for (j, v) in row_acc.iter().enumerate().take(panels) {
            let left = cols - j * 16;
            let mask: u16 = if left >= 16 { u16::MAX } else { (1u16 << left) - 1 };
            _mm512_mask_storeu_ps(out.add(r * ldo + j * 16), mask, *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 2003.0) - 0.5).collect()
    }

    /// Against an f64 product of the same bf16-rounded inputs: the kernel's only error is f32
    /// accumulation, over odd sizes and every tail (rows % 8, columns % 16, odd k).
    #[test]
    fn products_match_a_reference_on_every_tail() {
        if !supported() {
            eprintln!("this CPU has no AVX512-BF16: the kernel is not used here");
            return;
        }
        for (m, k, n) in
            [(1, 1, 1), (3, 5, 7), (8, 16, 16), (9, 33, 17), (70, 64, 50), (130, 257, 400), (16, 1024, 3072)]
        {
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let bias = Tensor::from_vec(values(n, 3), n, &Device::Cpu).unwrap();
            let linear = Bf16Linear::pack(&wb, n, k, Some(bias.clone()));
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let y: Vec<f32> = linear.forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = bias.to_vec1().unwrap();
            let round = |v: f32| bf16::from_f32(v).to_f32() as f64;
            for r in 0..m {
                for c in 0..n {
                    let terms = (0..k).map(|i| round(x[r * k + i]) * wb[c * k + i].to_f32() as f64);
                    let exact: f64 = terms.clone().sum::<f64>() + b[c] as f64;
                    // f32 accumulation: error within a few ulps × √k of the sum of |terms|.
                    let bound =
                        4.0 * f32::EPSILON as f64 * (k as f64).sqrt() * (terms.map(f64::abs).sum::<f64>() + 1.0);
                    let got = y[r * n + c] as f64;
                    assert!((got - exact).abs() <= bound, "{m}×{k}×{n} at ({r},{c}): {got} vs {exact}");
                }
            }
        }
    }

    #[test]
    fn leading_dimensions_are_kept() {
        if !supported() {
            return;
        }
        let wb: Vec<bf16> = values(6 * 4, 5).iter().map(|&v| bf16::from_f32(v)).collect();
        let linear = Bf16Linear::pack(&wb, 6, 4, None);
        let x = Tensor::from_vec(values(2 * 3 * 4, 6), (2, 3, 4), &Device::Cpu).unwrap();
        assert_eq!(linear.forward(&x).unwrap().dims(), &[2, 3, 6]);
        assert!(linear.forward(&Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap()).is_err());
    }
}
