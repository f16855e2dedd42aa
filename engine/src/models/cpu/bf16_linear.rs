//! Linear layers in bf16 on CPUs with AVX512-BF16 (`vdpbf16ps`: 32 bf16 products summed into 16
//! f32 lanes per instruction): weights packed once at load, activations rounded to bf16 per
//! call, f32 accumulation and f32 out. candle's own CPU bf16 matmul widens everything to f32 and
//! is slower than f32; this kernel runs the reward models' shapes at ~2.3× the f32 `gemm` crate
//! and ~88% of the instruction's peak (`cargo bench --bench bf16_kernel`). CPUs without the
//! instruction keep candle's path.

use std::arch::x86_64::*;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use half::bf16;
use rayon::prelude::*;

use super::mapped::matrix_view;

/// Rows of the activation per micro-tile.
const MR: usize = 6;
/// 16-column panels per micro-tile: MR × NR accumulators (24 of the 32 zmm registers). Even, so
/// that a gated tile holds whole (gate, up) panel pairs.
const NR: usize = 4;
/// Rows per parallel work item.
const MC: usize = 60;
/// Panel groups (NR × 16 columns) per parallel work item.
const NC_GROUPS: usize = 6;

/// Whether this CPU runs the kernel.
pub fn supported() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// A `[n, k]` weight packed for the kernel: panels of 16 output columns, each `[k/2][16]` u32
/// holding the bf16 pair (W[c, 2q], W[c, 2q+1]) of column c in lane c.
#[derive(Debug)]
struct Panels {
    data: Vec<u32>,
    /// Input features (k) and their pair count (k rounded up, halved).
    k: usize,
    pairs: usize,
    count: usize,
}

impl Panels {
    /// Packs `count` panels; `row(col, out)` writes packed column `col` (`panel × 16 + lane`) as
    /// bf16 bits into `out` (`k` long, zeroed) or leaves it zero (columns past the weight's end).
    fn pack(count: usize, k: usize, row: impl Fn(usize, &mut [u16]) + Sync) -> Self {
        let pairs = k.div_ceil(2);
        let mut data = Vec::with_capacity(count * pairs * 16);
        data.spare_capacity_mut().par_chunks_mut(pairs * 16).enumerate().for_each(|(p, panel)| {
            // 16 rows of 2·pairs bf16 (the odd tail stays 0), then interleaved pair by pair.
            let mut rows = vec![0u16; 16 * 2 * pairs];
            for (lane, out) in rows.chunks_mut(2 * pairs).enumerate() {
                row(p * 16 + lane, &mut out[..k]);
            }
            for (q, slot) in panel.chunks_mut(16).enumerate() {
                for (lane, v) in slot.iter_mut().enumerate() {
                    let r = &rows[lane * 2 * pairs..];
                    v.write(r[2 * q] as u32 | (r[2 * q + 1] as u32) << 16);
                }
            }
        });
        // SAFETY: the loop above wrote every one of the `count × pairs × 16` slots.
        unsafe { data.set_len(count * pairs * 16) };
        Self { data, k, pairs, count }
    }
}

/// One row of a checkpoint tensor `[rows, k]` (f32, f16 or bf16 bytes) as bf16 bits.
pub(super) fn read_row(view: &safetensors::tensor::TensorView<'_>, row: usize, out: &mut [u16]) {
    let k = out.len();
    let width = view.dtype().bitsize() / 8;
    let src = &view.data()[row * k * width..(row + 1) * k * width];
    match view.dtype() {
        // SAFETY: AVX512-BF16 checked; `src` holds `out.len()` f32 (little-endian, as x86 is).
        safetensors::Dtype::F32 if supported() => unsafe { round_bytes(src, out) },
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
}

/// `y = x Wᵀ (+ b)` with W packed for the kernel.
#[derive(Debug)]
pub struct Bf16Linear {
    panels: Panels,
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
        let view = matrix_view(checkpoint, &format!("{}.weight", vb.prefix()), out_dim, in_dim)?;
        let bias =
            if bias { Some(vb.get_with_hints_dtype(out_dim, "bias", Default::default(), DType::F32)?) } else { None };
        let panels = Panels::pack(out_dim.div_ceil(16), in_dim, |col, out| {
            if col < out_dim {
                read_row(&view, col, out)
            }
        });
        Ok(Self { panels, n: out_dim, bias })
    }

    /// Packs a row-major `[n, k]` bf16 weight (tests and the kernel benchmark; models load from
    /// checkpoints).
    pub fn pack(weight: &[bf16], n: usize, k: usize, bias: Option<Tensor>) -> Self {
        assert_eq!(weight.len(), n * k, "weight of {n}×{k}");
        let panels = Panels::pack(n.div_ceil(16), k, |col, out| {
            if col < n {
                for (o, w) in out.iter_mut().zip(&weight[col * k..(col + 1) * k]) {
                    *o = w.to_bits();
                }
            }
        });
        Self { panels, n, bias }
    }

    /// `[m, k]` f32 rows → `[m, n]` f32.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        run(&self.panels, x, m, self.n, Epilogue::Store)
    }
}

impl Module for Bf16Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let y = forward_rows(xs, self.panels.k, self.n, |x, m| self.matmul(x, m))?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The gated MLP's first half, `silu(x Wgᵀ) · (x Wuᵀ)`, as one product: gate and up panels
/// interleaved (gate panel p, then up panel p), so a micro-tile holds both halves of its output
/// columns and writes `silu(gate) · up` straight from its accumulators. Against two products and
/// an elementwise pass: the activations rounded once, and no `[m, intermediate]` gate and up
/// outputs written and read back.
#[derive(Debug)]
pub struct GatedBf16 {
    panels: Panels,
    /// Output features (the intermediate size).
    n: usize,
}

impl GatedBf16 {
    /// Loads `{gate}.weight` and `{up}.weight` (`[intermediate, hidden]`, no bias).
    pub fn load(
        hidden: usize,
        intermediate: usize,
        gate: &str,
        up: &str,
        checkpoint: &MmapedSafetensors,
    ) -> Result<Self> {
        let gate = matrix_view(checkpoint, &format!("{gate}.weight"), intermediate, hidden)?;
        let up = matrix_view(checkpoint, &format!("{up}.weight"), intermediate, hidden)?;
        Ok(Self::pack_with(hidden, intermediate, |which_up, row, out| {
            read_row(if which_up { &up } else { &gate }, row, out)
        }))
    }

    /// From row-major `[n, k]` bf16 gate and up weights (tests and the kernel benchmark).
    pub fn pack(gate: &[bf16], up: &[bf16], n: usize, k: usize) -> Self {
        assert!(gate.len() == n * k && up.len() == n * k, "weights of {n}×{k}");
        Self::pack_with(k, n, |which_up, row, out| {
            let w = if which_up { up } else { gate };
            for (o, w) in out.iter_mut().zip(&w[row * k..(row + 1) * k]) {
                *o = w.to_bits();
            }
        })
    }

    /// `row(is_up, row, out)` writes row `row` of the gate (`false`) or up (`true`) weight.
    fn pack_with(k: usize, n: usize, row: impl Fn(bool, usize, &mut [u16]) + Sync) -> Self {
        let panels = Panels::pack(2 * n.div_ceil(16), k, |col, out| {
            let (panel, lane) = (col / 16, col % 16);
            let source_row = panel / 2 * 16 + lane;
            if source_row < n {
                row(panel % 2 == 1, source_row, out)
            }
        });
        Self { panels, n }
    }

    /// `[m, k]` f32 rows → `silu(gate) · up`, `[m, n]` f32.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        run(&self.panels, x, m, self.n, Epilogue::SiluMul)
    }
}

impl Module for GatedBf16 {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        forward_rows(xs, self.panels.k, self.n, |x, m| self.matmul(x, m))
    }
}

/// Applies `product(rows, m)` to the last dimension of `xs` (`k` features in, `n` out), reading
/// the activations where they are (a copy would cost page faults on a fresh buffer).
fn forward_rows(xs: &Tensor, k: usize, n: usize, product: impl Fn(&[f32], usize) -> Vec<f32>) -> Result<Tensor> {
    let dims = xs.dims().to_vec();
    let features = *dims.last().expect("a linear layer's input has a feature dimension");
    if features != k {
        candle_core::bail!("bf16 linear layer: input has {features} features, the weight {k}");
    }
    let m = xs.elem_count() / k;
    let xs = xs.to_dtype(DType::F32)?.contiguous()?;
    let y = {
        let (storage, layout) = xs.storage_and_layout();
        product(super::fast_ops::cpu_f32(&storage, layout)?, m)
    };
    let mut out_dims = dims;
    *out_dims.last_mut().expect("non-empty") = n;
    Tensor::from_vec(y, out_dims, &Device::Cpu)
}

/// What a micro-tile writes.
#[derive(Clone, Copy, PartialEq)]
enum Epilogue {
    /// Its accumulators, one output column each.
    Store,
    /// `silu(gate) · up` of each (gate, up) accumulator pair: half as many columns.
    SiluMul,
}

/// `x` `[m, k]` times the packed weight: `[m, n]` f32.
fn run(panels: &Panels, x: &[f32], m: usize, n: usize, epilogue: Epilogue) -> Vec<f32> {
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: `y` has room for the `m × n` outputs, which `run_into` all writes.
    unsafe {
        run_into(panels, x, m, n, epilogue, y.as_mut_ptr());
        y.set_len(m * n);
    }
    y
}

/// [`run`] into `y`, which has room for `m × n` f32 (initialised or not: all are written).
unsafe fn run_into(panels: &Panels, x: &[f32], m: usize, n: usize, epilogue: Epilogue, y: *mut f32) {
    assert!(supported(), "the bf16 kernel needs AVX512-BF16");
    let (k, pairs) = (panels.k, panels.pairs);
    assert_eq!(x.len(), m * k);
    // Activations as bf16 pairs, rows padded to an even length.
    let mut a: Vec<u32> = Vec::with_capacity(m * pairs);
    a.spare_capacity_mut().par_chunks_mut(pairs).zip(x.par_chunks(k)).for_each(|(out, row)| {
        // SAFETY: `supported()` was checked above; `round_row` writes all of `out`.
        unsafe { round_row(row, out.as_mut_ptr() as *mut u32, pairs) }
    });
    // SAFETY: every row was written just above.
    unsafe { a.set_len(m * pairs) };
    // Output columns per panel of the packed weight.
    let (panel_cols, full_cols) = match epilogue {
        Epilogue::Store => (16, NR * 16),
        Epilogue::SiluMul => (8, NR * 8),
    };
    let groups = panels.count.div_ceil(NR);
    let items: Vec<(usize, usize)> =
        (0..m.div_ceil(MC)).flat_map(|rb| (0..groups.div_ceil(NC_GROUPS)).map(move |gb| (rb, gb))).collect();
    let out = SendPtr(y);
    items.into_par_iter().for_each(|(rb, gb)| {
        let out = &out;
        let rows = rb * MC..((rb + 1) * MC).min(m);
        for g in gb * NC_GROUPS..((gb + 1) * NC_GROUPS).min(groups) {
            let first_panel = g * NR;
            let tile_panels = NR.min(panels.count - first_panel);
            let first_col = first_panel * panel_cols;
            let cols = (n - first_col).min(full_cols);
            for r in rows.clone().step_by(MR) {
                let tile_rows = (rows.end - r).min(MR);
                // SAFETY: `supported()` was checked; each work item writes its own rows × columns
                // of `y` (together: all of it), whose buffer the caller keeps for the parallel
                // loop; every read is in bounds (panels and pair rows are padded).
                unsafe {
                    let tile = Tile {
                        a: a.as_ptr().add(r * pairs),
                        pairs,
                        rows: tile_rows,
                        b: panels.data.as_ptr().add(first_panel * pairs * 16),
                        panels: tile_panels,
                        out: out.0.add(r * n + first_col),
                        ldo: n,
                        cols,
                    };
                    if tile_rows == MR && tile_panels == NR && cols == full_cols {
                        full_tile(tile, epilogue)
                    } else {
                        edge_tile(tile, epilogue)
                    }
                }
            }
        }
    });
}

struct SendPtr(*mut f32);
// SAFETY: the work items write disjoint regions of the buffer behind the pointer.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// One row of f32 → `pairs` bf16 pairs at `out` (round to nearest even, as transformers'
/// `.to(bfloat16)`); an odd row's last pair is padded with 0.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_row(row: &[f32], out: *mut u32, pairs: usize) {
    let halves = out as *mut u16;
    round_f32s(row.as_ptr(), row.len(), halves);
    if row.len() < 2 * pairs {
        *halves.add(row.len()) = 0;
    }
}

/// f32 bytes of a checkpoint row (little-endian, as x86 is; any alignment) → bf16 bits; most of
/// a bf16 load of an f32 checkpoint is this loop.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_bytes(src: &[u8], out: &mut [u16]) {
    assert_eq!(src.len(), 4 * out.len());
    round_f32s(src.as_ptr() as *const f32, out.len(), out.as_mut_ptr())
}

/// `len` f32 at `src` (unaligned reads) → bf16 bits at `out`, 16 at a time, rounding to nearest
/// even as `bf16::from_f32` does.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_f32s(src: *const f32, len: usize, out: *mut u16) {
    let mut i = 0;
    while i + 16 <= len {
        let v = _mm512_loadu_ps(src.add(i));
        let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        _mm256_storeu_si256(out.add(i) as *mut __m256i, b);
        i += 16;
    }
    for j in i..len {
        *out.add(j) = bf16::from_f32(src.add(j).read_unaligned()).to_bits();
    }
}

/// One micro-tile's operands: `rows` (≤ MR) pair rows of the activations at `a` (`pairs` each),
/// `panels` (≤ NR) packed panels at `b`, and `cols` output columns at `out` (row stride `ldo`).
#[derive(Clone, Copy)]
struct Tile {
    a: *const u32,
    pairs: usize,
    rows: usize,
    b: *const u32,
    panels: usize,
    out: *mut f32,
    ldo: usize,
    cols: usize,
}

/// A whole MR × (NR panels) tile: with the sizes constant, the loops unroll and every branch
/// folds away.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn full_tile(tile: Tile, epilogue: Epilogue) {
    let cols = if epilogue == Epilogue::Store { NR * 16 } else { NR * 8 };
    tile_body(Tile { rows: MR, panels: NR, cols, ..tile }, epilogue)
}

/// A tile at the bottom or right edge: fewer rows, panels or columns.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn edge_tile(tile: Tile, epilogue: Epilogue) {
    tile_body(tile, epilogue)
}

/// `rows` × `panels` accumulators: each is 16 packed columns of one row, each step one bf16 pair
/// of the row broadcast against one packed pair per column. Then the epilogue writes `cols`
/// output columns.
#[inline(always)]
unsafe fn tile_body(tile: Tile, epilogue: Epilogue) {
    let Tile { a, pairs, rows, b, panels, out, ldo, cols } = tile;
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    for q in 0..pairs {
        let mut bv = [_mm512_setzero_si512(); NR];
        for (j, v) in bv.iter_mut().enumerate().take(panels) {
            *v = _mm512_loadu_si512(b.add((j * pairs + q) * 16) as *const _);
        }
        for (r, row_acc) in acc.iter_mut().enumerate().take(rows) {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * pairs + q) as i32));
            for j in 0..NR {
                row_acc[j] = _mm512_dpbf16_ps(row_acc[j], av, std::mem::transmute::<__m512i, __m512bh>(bv[j]));
            }
        }
    }
    for (r, row_acc) in acc.iter().enumerate().take(rows) {
        let row_out = out.add(r * ldo);
        match epilogue {
            Epilogue::Store => {
                for (j, v) in row_acc.iter().enumerate().take(cols.div_ceil(16)) {
                    store(row_out.add(j * 16), cols - j * 16, *v);
                }
            }
            Epilogue::SiluMul => {
                for j in 0..cols.div_ceil(16) {
                    let (gate, up) = (row_acc[2 * j], row_acc[2 * j + 1]);
                    store(row_out.add(j * 16), cols - j * 16, _mm512_mul_ps(silu(gate), up));
                }
            }
        }
    }
}

/// Stores the first `left` (all when ≥ 16) lanes of `v` at `ptr`.
#[inline(always)]
unsafe fn store(ptr: *mut f32, left: usize, v: __m512) {
    let mask: u16 = if left >= 16 { u16::MAX } else { (1u16 << left) - 1 };
    _mm512_mask_storeu_ps(ptr, mask, v)
}

/// `x · sigmoid(x)` on 16 lanes, with [`exp`].
#[inline(always)]
unsafe fn silu(x: __m512) -> __m512 {
    let one = _mm512_set1_ps(1.0);
    _mm512_div_ps(x, _mm512_add_ps(one, exp(_mm512_sub_ps(_mm512_setzero_ps(), x))))
}

/// `exp` on 16 lanes, the algorithm of [`super::fast_ops::exp_f32`] (Cody–Waite reduction,
/// degree-7 polynomial, `2^n` applied by `vscalefps`): within a few ulp, 0 below the smallest
/// normal result.
#[inline(always)]
unsafe fn exp(x: __m512) -> __m512 {
    const C: [f32; 8] = [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];
    let low = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.336_54));
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.336_54)), _mm512_set1_ps(88.722_83));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(C[7]);
    for c in C[..7].iter().rev() {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    _mm512_maskz_mov_ps(!low, _mm512_scalef_ps(p, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_values as values;

    /// Against an f64 product of the same bf16-rounded inputs: the kernel's only error is f32
    /// accumulation, over odd sizes and every tail (rows % 8, columns % 16, odd k).
    #[test]
    fn products_match_a_reference_on_every_tail() {
        if !super::super::bf16_kernel_or_skip("products_match_a_reference_on_every_tail") {
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

    /// The fused gate/up product against `silu(x·gᵀ) · (x·uᵀ)` computed in f64 from the same
    /// bf16-rounded inputs, over every tail (rows % MR, columns % 16 and % 32, odd k).
    #[test]
    fn gated_product_matches_silu_of_gate_times_up() {
        if !super::super::bf16_kernel_or_skip("gated_product_matches_silu_of_gate_times_up") {
            return;
        }
        for (m, k, n) in
            [(1, 1, 1), (5, 7, 9), (6, 16, 16), (7, 33, 40), (13, 64, 100), (61, 130, 257), (6, 1024, 3072)]
        {
            let x = values(m * k, 1);
            let gate: Vec<bf16> = values(n * k, 2).iter().map(|&v| bf16::from_f32(3.0 * v)).collect();
            let up: Vec<bf16> = values(n * k, 3).iter().map(|&v| bf16::from_f32(v)).collect();
            let fused = GatedBf16::pack(&gate, &up, n, k);
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let y: Vec<f32> = fused.forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(y.len(), m * n);
            let round = |v: f32| bf16::from_f32(v).to_f32() as f64;
            for r in 0..m {
                for c in 0..n {
                    let dot = |w: &[bf16]| -> (f64, f64) {
                        let terms = (0..k).map(|i| round(x[r * k + i]) * w[c * k + i].to_f32() as f64);
                        (terms.clone().sum(), terms.map(f64::abs).sum())
                    };
                    let ((g, g_abs), (u, u_abs)) = (dot(&gate), dot(&up));
                    let exact = g / (1.0 + (-g).exp()) * u;
                    // f32 accumulation of both products, then a few ulp in exp and the divide.
                    let err = 4.0 * f32::EPSILON as f64 * (k as f64).sqrt();
                    let bound = err * ((g_abs + 1.0) * u.abs() * 1.1 + g.abs() * (u_abs + 1.0)) + 1e-6 * exact.abs();
                    let got = y[r * n + c] as f64;
                    assert!((got - exact).abs() <= bound, "{m}×{k}×{n} at ({r},{c}): {got} vs {exact}");
                }
            }
        }
    }

    /// The 16-lane exp against the scalar one it mirrors, over the whole range and beyond.
    #[test]
    fn vector_exp_matches_the_scalar_one() {
        if !super::super::bf16_kernel_or_skip("vector_exp_matches_the_scalar_one") {
            return;
        }
        let xs: Vec<f32> = (0..16 * 2000).map(|i| -100.0 + i as f32 * (190.0 / 32_000.0)).collect();
        for chunk in xs.chunks(16) {
            let mut got = [0f32; 16];
            // SAFETY: AVX-512 checked by `supported()`.
            unsafe { check_exp(chunk, &mut got) };
            for (x, g) in chunk.iter().zip(got) {
                let want = super::super::fast_ops::exp_f32(*x);
                assert!((g - want).abs() <= 2.0 * f32::EPSILON * want, "exp({x}): {g} vs {want}");
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn check_exp(x: &[f32], out: &mut [f32; 16]) {
        _mm512_storeu_ps(out.as_mut_ptr(), exp(_mm512_loadu_ps(x.as_ptr())));
    }

    /// The vectorised conversion of checkpoint rows rounds as `bf16::from_f32` (ties to even),
    /// tails included.
    #[test]
    fn checkpoint_rows_round_like_half() {
        if !super::super::bf16_kernel_or_skip("checkpoint_rows_round_like_half") {
            return;
        }
        let mut xs: Vec<f32> = values(37, 4).iter().map(|v| v * 1e3).collect();
        // Exact ties between two bf16 values (1 + 2⁻⁸, 1 + 3·2⁻⁸) go to the even one.
        xs.extend([1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -0.0, 65_504.0, 3.0e38]);
        let bytes: Vec<u8> = xs.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![0u16; xs.len()];
        // SAFETY: AVX512-BF16 checked above.
        unsafe { round_bytes(&bytes, &mut out) };
        let want: Vec<u16> = xs.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn leading_dimensions_are_kept() {
        if !super::super::bf16_kernel_or_skip("leading_dimensions_are_kept") {
            return;
        }
        let wb: Vec<bf16> = values(6 * 4, 5).iter().map(|&v| bf16::from_f32(v)).collect();
        let linear = Bf16Linear::pack(&wb, 6, 4, None);
        let x = Tensor::from_vec(values(2 * 3 * 4, 6), (2, 3, 4), &Device::Cpu).unwrap();
        assert_eq!(linear.forward(&x).unwrap().dims(), &[2, 3, 6]);
        assert!(linear.forward(&Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap()).is_err());
    }
}
