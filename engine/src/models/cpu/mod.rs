//! The CPU kernels of the models, and every `cfg(target_arch)` of the model code: the layers
//! call the portable API below and never look at the architecture. Kernels take tensors, slices
//! and scalars, never a model struct.
//!
//! - [`fast_ops`]: fused f32 elementwise passes (SiLU·up, masked softmax, split into heads with
//!   the per-head RMSNorm and rotary), vectorised with AVX-512 where the CPU has it.
//! - `bf16_linear` (x86-64): the AVX512-BF16 kernel of `--dtype bf16` (projections, the gated
//!   MLP product, attention's two products). On other architectures [`PackedLinear`] and
//!   [`PackedGated`] exist but cannot be loaded, and [`bf16_kernel_available`] is false.

#[cfg(target_arch = "x86_64")]
pub mod bf16_linear;
pub mod fast_ops;

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

/// Checks that `name` is a `[vocab, hidden]` table the bf16 embedding can read rows of.
pub fn check_mapped_embedding(checkpoint: &MmapedSafetensors, name: &str, hidden: usize, vocab: usize) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    return bf16_linear::weight_view(checkpoint, name, hidden, vocab).map(|_| ());
    #[cfg(not(target_arch = "x86_64"))]
    no_kernel::refuse(checkpoint, name, hidden, vocab)
}

/// Rows `ids` of the table `name` in the memory-mapped checkpoint, rounded to bf16 (as the bf16
/// model's own table would be) and handed on in f32: `[ids.dims(), hidden]`.
pub fn mapped_embedding(checkpoint: &MmapedSafetensors, name: &str, hidden: usize, ids: &Tensor) -> Result<Tensor> {
    #[cfg(target_arch = "x86_64")]
    {
        let view = checkpoint.get(name)?;
        let vocab = view.shape()[0];
        let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let mut bits = vec![0u16; hidden];
        let mut out = Vec::with_capacity(flat.len() * hidden);
        for &id in &flat {
            if id as usize >= vocab {
                candle_core::bail!("token id {id} is outside the embedding table ({vocab} rows)");
            }
            bf16_linear::read_row(&view, id as usize, &mut bits);
            out.extend(bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()));
        }
        let mut dims = ids.dims().to_vec();
        dims.push(hidden);
        Tensor::from_vec(out, dims, ids.device())
    }
    #[cfg(not(target_arch = "x86_64"))]
    no_kernel::refuse(checkpoint, name, hidden, ids.elem_count()).map(|_| unreachable!())
}

/// Scaled, masked attention on CPU in f32: q `[b, kv_heads, n_rep × rows, d]` (the query heads
/// that share a KV head grouped), k and v `[b, kv_heads, keys, d]`; returns
/// `[b, kv_heads × n_rep, rows, d]`. Scale, mask and softmax run as one pass; with
/// `bf16_products` and the kernel, both products take bf16 operands (the bf16 mode's, as
/// transformers' bf16 attention does), otherwise candle's f32 matmul.
pub fn attention_f32(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (rows, scale): (usize, f32),
    limits: KeyLimits,
    bf16_products: bool,
) -> Result<Tensor> {
    let (b, kv_heads, grouped_rows, d) = q.dims4()?;
    let keys = k.dim(2)?;
    let heads = kv_heads * (grouped_rows / rows.max(1));
    #[cfg(target_arch = "x86_64")]
    if bf16_products && bf16_linear::supported() {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let ((qs, ql), (ks, kl), (vs, vl)) = (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout());
        let out = bf16_linear::attention_products(
            (cpu_f32(&qs, ql)?, cpu_f32(&ks, kl)?, cpu_f32(&vs, vl)?),
            (b * kv_heads, grouped_rows, keys, d),
            |scores| fast_ops::masked_softmax(scores, (keys, grouped_rows * kv_heads), scale, rows, limits),
        );
        // [b, kv, n_rep × rows, d] is [b, heads, rows, d].
        return Tensor::from_vec(out, (b, heads, rows, d), q.device());
    }
    let _ = bf16_products;
    // One pass instead of five (scale, mask, and softmax's three), with a vectorised exp.
    let scores = q.matmul(&k.t()?)?; // [b, kv, n_rep*rows, keys], a fresh buffer
    fast_ops::masked_softmax_in_place(&scores, scale, rows, limits)?;
    scores.matmul(v)?.reshape((b, heads, rows, d))
}

/// Stand-ins where the bf16 kernel cannot exist: types that cannot be loaded (and so never run).
#[cfg(not(target_arch = "x86_64"))]
mod no_kernel {
    use candle_core::safetensors::MmapedSafetensors;
    use candle_core::{Module, Result, Tensor};
    use candle_nn::VarBuilder;

    pub fn refuse(_: &MmapedSafetensors, _: &str, _: usize, _: usize) -> Result<()> {
        candle_core::bail!("the bf16 kernel needs an x86-64 CPU with AVX512-BF16")
    }

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
