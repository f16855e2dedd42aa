//! The CPU kernels of the models, and every `cfg(target_arch)` of the model code: the layers
//! call the portable API below and never look at the architecture. Kernels take tensors, slices
//! and scalars, never a model struct.
//!
//! - [`attention`]: attention one query row at a time over its own keys (batch-invariant).
//! - [`fast_ops`]: fused f32 elementwise passes (SiLU·up, masked softmax, split into heads with
//!   the per-head RMSNorm and rotary), vectorised with AVX-512 where the CPU has it.
//! - [`mapped`]: weights read straight from the memory-mapped checkpoint into a kernel's layout.
//! - `bf16_linear` (x86-64): the AVX512-BF16 kernel of `--dtype bf16` (projections, the gated
//!   MLP product, attention's two products). On other architectures [`PackedLinear`] and
//!   [`PackedGated`] exist but cannot be loaded, and [`bf16_kernel_available`] is false.

pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod bf16_linear;
pub mod fast_ops;
pub mod mapped;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Result, Tensor};

pub use fast_ops::{cpu_f32, KeyLimits};

/// Whether this CPU runs the bf16 kernel (x86-64 with AVX512-BF16).
pub fn bf16_kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return bf16_linear::supported();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// For a test of the bf16 kernel: whether the kernel runs on this CPU. When it does not, the
/// test should return at once, and this says so on stderr past the test harness's capture (a
/// line CI shows: a skipped test is never a silent `ok`); with `SKYSCORE_REQUIRE_BF16_KERNEL=1`
/// it fails the test instead.
pub fn bf16_kernel_or_skip(test: &str) -> bool {
    if bf16_kernel_available() {
        return true;
    }
    if std::env::var("SKYSCORE_REQUIRE_BF16_KERNEL").is_ok_and(|v| v == "1") {
        panic!("{test}: this CPU has no AVX512-BF16 and SKYSCORE_REQUIRE_BF16_KERNEL=1 requires the bf16 kernel");
    }
    use std::io::Write;
    // Straight to the file descriptor: libtest captures `eprintln!`, not writes to stderr.
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: this CPU has no AVX512-BF16, so the bf16 kernel is not tested here \
         (SKYSCORE_REQUIRE_BF16_KERNEL=1 makes this a failure)"
    );
    false
}

/// `y = x Wᵀ (+ b)` with W packed for the bf16 kernel.
#[cfg(target_arch = "x86_64")]
pub use bf16_linear::Bf16Linear as PackedLinear;
/// `silu(x Wgᵀ) · (x Wuᵀ)` as one bf16-kernel product.
#[cfg(target_arch = "x86_64")]
pub use bf16_linear::GatedBf16 as PackedGated;
#[cfg(not(target_arch = "x86_64"))]
pub use no_kernel::{PackedGated, PackedLinear};

/// Checks that `name` is a `[vocab, hidden]` table [`mapped_embedding`] can read rows of.
pub fn check_mapped_embedding(checkpoint: &MmapedSafetensors, name: &str, hidden: usize, vocab: usize) -> Result<()> {
    mapped::matrix_view(checkpoint, name, vocab, hidden).map(|_| ())
}

/// Rows `ids` of the table `name` in the memory-mapped checkpoint, in f32 (`round_bf16`:
/// rounded to bf16, as a bf16 model's own table would be): `[ids.dims(), hidden]`. A batch
/// looks up a few thousand rows; a copy of the table would fault in pages for all of it.
pub fn mapped_embedding(
    checkpoint: &MmapedSafetensors,
    name: &str,
    hidden: usize,
    ids: &Tensor,
    round_bf16: bool,
) -> Result<Tensor> {
    let view = checkpoint.get(name)?;
    let vocab = view.shape()[0];
    let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; flat.len() * hidden];
    for (&id, row) in flat.iter().zip(out.chunks_exact_mut(hidden.max(1))) {
        if id as usize >= vocab {
            candle_core::bail!("token id {id} is outside the embedding table ({vocab} rows)");
        }
        mapped::read_row(&view, id as usize, row, round_bf16);
    }
    let mut dims = ids.dims().to_vec();
    dims.push(hidden);
    Tensor::from_vec(out, dims, ids.device())
}

/// Scaled, masked attention on CPU in f32: q `[b, kv_heads, n_rep × rows, d]` (the query heads
/// that share a KV head grouped), k and v `[b, kv_heads, keys, d]`; returns
/// `[b, kv_heads × n_rep, rows, d]`. Each query row runs over exactly the keys it sees, in a
/// fixed order ([`attention`]): a row's result does not depend on its batch. With
/// `bf16_products`, the products take bf16-rounded operands (the bf16 mode's, as transformers'
/// bf16 attention does).
pub fn attention_f32(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (rows, scale): (usize, f32),
    limits: KeyLimits,
    bf16_products: bool,
) -> Result<Tensor> {
    let (b, kv_heads, grouped_rows, d) = q.dims4()?;
    let keys = k.dim(2)?;
    let heads = kv_heads * (grouped_rows / rows.max(1));
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let ((qs, ql), (ks, kl), (vs, vl)) = (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout());
    let shape = attention::Shape { batch: b, kv_heads, grouped_rows, rows, keys, d };
    let out = attention::attention(
        (cpu_f32(&qs, ql)?, cpu_f32(&ks, kl)?, cpu_f32(&vs, vl)?),
        shape,
        scale,
        limits,
        bf16_products,
    );
    // [b, kv, n_rep × rows, d] is [b, heads, rows, d].
    Tensor::from_vec(out, (b, heads, rows, d), q.device())
}

/// `x Wᵀ (+ b)` on CPU in f32 through candle's matmul (the `gemm` crate), held in the one form
/// in which `gemm` gives a row the same bits whatever the other rows: `Wᵀ` stored `[in, out]`
/// row-major. With `W` as stored (`Wᵀ` column-major), `gemm` picks other kernels for some
/// product shapes (small ones, and others seen to differ in the tests), which sum in another
/// order; and a lone row is computed next to a copy of itself (`gemm` runs a single row through
/// its matrix-vector path).
#[derive(Debug, Clone)]
pub struct CpuLinear {
    /// `Wᵀ` `[in, out]`, row-major.
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl CpuLinear {
    /// From a candle `Linear` (a model built from tensors rather than a checkpoint: tests).
    pub fn new(linear: candle_nn::Linear) -> Result<Self> {
        Ok(Self { weight_t: transpose_f32(linear.weight())?, bias: linear.bias().cloned() })
    }

    /// The `[out_dim, in_dim]` weight `name` transposed straight from the memory-mapped
    /// checkpoint (f32, bf16 or f16 there): one pass, no copy of the matrix as stored.
    pub fn from_checkpoint(
        checkpoint: &MmapedSafetensors,
        name: &str,
        (in_dim, out_dim): (usize, usize),
        bias: Option<Tensor>,
        round_bf16: bool,
    ) -> Result<Self> {
        let view = mapped::matrix_view(checkpoint, name, out_dim, in_dim)?;
        let weight_t =
            Tensor::from_vec(mapped::transposed(&view, round_bf16), (in_dim, out_dim), &candle_core::Device::Cpu)?;
        Ok(Self { weight_t, bias })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (in_dim, out_dim) = self.weight_t.dims2()?;
        let mut dims = xs.dims().to_vec();
        if dims.last() != Some(&in_dim) {
            candle_core::bail!("linear layer: input {dims:?}, weight of {in_dim} inputs");
        }
        let rows = xs.elem_count() / in_dim.max(1);
        let x = xs.reshape((rows, in_dim))?;
        let w = &self.weight_t;
        let y = if rows == 1 { Tensor::cat(&[&x, &x], 0)?.matmul(w)?.narrow(0, 0, 1)? } else { x.matmul(w)? };
        *dims.last_mut().expect("non-empty") = out_dim;
        let y = y.reshape(dims)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// A 2-D f32 matrix transposed into a new row-major one ([`mapped::transpose_with`]'s tiles).
fn transpose_f32(w: &Tensor) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let w = w.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let out = mapped::transpose_with(cpu_f32(&storage, layout)?, (rows, cols), |&v| v);
    Tensor::from_vec(out, (cols, rows), w.device())
}

/// The reward head on CPU in f32: `rows` `[b, hidden]` · `weight` `[1, hidden]` → `[b]`, each
/// score one dot product in a fixed order (`gemm`'s matrix-vector path groups rows in a way
/// that depends on how many there are).
pub fn score_head_f32(rows: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (b, hidden) = rows.dims2()?;
    let rows = rows.contiguous()?;
    let weight = weight.to_dtype(candle_core::DType::F32)?.flatten_all()?;
    let ((rs, rl), (ws, wl)) = (rows.storage_and_layout(), weight.storage_and_layout());
    let (x, w) = (cpu_f32(&rs, rl)?, cpu_f32(&ws, wl)?);
    if w.len() != hidden {
        candle_core::bail!("score head: weight of {} values for hidden size {hidden}", w.len());
    }
    let mut scores = vec![0f32; b];
    attention::dots(w, x, &mut scores);
    Tensor::from_vec(scores, b, rows.device())
}

/// Stand-ins where the bf16 kernel cannot exist: types that cannot be loaded (and so never run).
#[cfg(not(target_arch = "x86_64"))]
mod no_kernel {
    use candle_core::safetensors::MmapedSafetensors;
    use candle_core::{Module, Result, Tensor};
    use candle_nn::VarBuilder;

    #[derive(Debug)]
    pub enum PackedLinear {}

    impl PackedLinear {
        pub fn load(_: usize, _: usize, _: bool, _: VarBuilder, _: &MmapedSafetensors) -> Result<Self> {
            candle_core::bail!("the bf16 kernel needs an x86-64 CPU with AVX512-BF16")
        }
    }

    impl Module for PackedLinear {
        fn forward(&self, _: &Tensor) -> Result<Tensor> {
            match *self {}
        }
    }

    #[derive(Debug)]
    pub enum PackedGated {}

    impl PackedGated {
        pub fn load(_: usize, _: usize, _: &str, _: &str, _: &MmapedSafetensors) -> Result<Self> {
            candle_core::bail!("the bf16 kernel needs an x86-64 CPU with AVX512-BF16")
        }
    }

    impl Module for PackedGated {
        fn forward(&self, _: &Tensor) -> Result<Tensor> {
            match *self {}
        }
    }
}

/// Deterministic test values in [-0.5, 0.5) (candle's CPU randn cannot be seeded).
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: usize) -> Vec<f32> {
    (0..len).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 2003.0) - 0.5).collect()
}

#[cfg(test)]
mod tests {
    use super::{test_values as values, *};

    /// The first row's outputs, bit for bit, whatever the rows after it: alone, in a few rows,
    /// in many (shapes where `gemm` with the weight as stored gives other bits: n ≤ 64, m = 1).
    #[test]
    fn a_row_of_a_linear_layer_is_the_same_bits_in_any_batch() {
        let device = candle_core::Device::Cpu;
        for (k, n) in [(64, 64), (64, 32), (160, 64), (64, 160), (1024, 3072), (3072, 1024), (1024, 1)] {
            let weight = Tensor::from_vec(values(k * n, 2), (n, k), &device).unwrap();
            let linear = CpuLinear::new(candle_nn::Linear::new(weight.clone(), None)).unwrap();
            let expected: Vec<f32> = weight.t().unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let transposed: Vec<f32> = linear.weight_t.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(transposed, expected, "{k} × {n} transposed");
            let row = values(k, 1);
            let first_row = |b: usize, t: usize| -> Vec<u32> {
                let mut x = row.clone();
                x.extend(values((b * t - 1) * k, 3));
                let x = Tensor::from_vec(x, (b, t, k), &device).unwrap();
                let y = linear.forward(&x).unwrap().flatten_all().unwrap();
                y.narrow(0, 0, n).unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
            };
            let alone = first_row(1, 1);
            for (b, t) in [(1, 2), (1, 40), (1, 65), (7, 5), (16, 100), (2, 1), (64, 30)] {
                assert_eq!(first_row(b, t), alone, "k {k}, n {n}: batch {b} × {t}");
            }
        }
    }

    #[test]
    fn the_score_head_is_a_dot_product_per_row() {
        let device = candle_core::Device::Cpu;
        let (rows, weight) = (values(3 * 40, 1), values(40, 2));
        let x = Tensor::from_vec(rows.clone(), (3, 40), &device).unwrap();
        let w = Tensor::from_vec(weight.clone(), (1, 40), &device).unwrap();
        let scores: Vec<f32> = score_head_f32(&x, &w).unwrap().to_vec1().unwrap();
        for (r, score) in scores.iter().enumerate() {
            let want: f64 = (0..40).map(|i| rows[r * 40 + i] as f64 * weight[i] as f64).sum();
            assert!((*score as f64 - want).abs() < 1e-5, "row {r}: {score} vs {want}");
        }
        let alone: Vec<f32> = score_head_f32(&x.narrow(0, 1, 1).unwrap(), &w).unwrap().to_vec1().unwrap();
        assert_eq!(alone[0].to_bits(), scores[1].to_bits());
    }
}
