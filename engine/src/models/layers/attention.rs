//! Scaled dot-product attention with grouped KV heads: the CPU f32 kernel's rows, or candle's
//! ops in blocks of query rows whose scores and masks stay within a fixed budget.

use candle_core::{DType, Result, Tensor};

use super::super::cpu;
use super::{LinearKind, QueryRows};

/// Most attention scores held at once on candle's path, in elements (`b × heads × query rows ×
/// keys`): 64M, 256 MiB in f32 (the block's mask is at most as large). Longer batches are computed a block of query rows at a time, so memory
/// grows linearly with the sequence instead of quadratically (a 16 × 4096-token batch of an 8B
/// model would otherwise need 32 GiB for one layer's scores).
pub const MAX_SCORE_ELEMENTS: usize = 64 << 20;

/// How attention's two products (scores and the weighted sum of values) run on CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionProducts {
    /// In the activations' dtype (candle's matmul): f32 stays exact.
    Exact,
    /// bf16 inputs, f32 accumulation, through the bf16 kernel: the bf16 mode's, as transformers'
    /// bf16 attention multiplies bf16 q, k, probabilities and v.
    Bf16,
}

impl AttentionProducts {
    pub fn for_kind(kind: &LinearKind) -> Self {
        match kind {
            LinearKind::PackedBf16(_) => AttentionProducts::Bf16,
            // bf16-rounded weights in the f32 path: attention stays f32 like the rest of the path
            // (rounding its operands would only cost passes on CPUs that multiply bf16 as f32).
            LinearKind::Dense | LinearKind::MappedF32 { .. } => AttentionProducts::Exact,
        }
    }
}

/// Which implementation computes attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    /// skyscore's CPU f32 kernel: one row of scores per task, key limits instead of a mask,
    /// batch-invariant (see `cpu::attention`).
    CpuRows,
    /// candle's ops (GPUs, CPU f16 and candle's bf16): blocks of query rows, each with its own
    /// additive mask, bounded by the score budget.
    Candle,
}

impl AttentionPath {
    /// The path for queries `q`: the CPU kernel for CPU f32, candle's ops elsewhere.
    pub fn for_queries(q: &Tensor) -> Self {
        if q.device().is_cpu() && q.dtype() == DType::F32 {
            AttentionPath::CpuRows
        } else {
            AttentionPath::Candle
        }
    }
}

/// Scaled dot-product attention with grouped KV heads, each query row seeing the keys `queries`
/// allows. q: `[b, heads, tq, d]` (the rows `queries` selects), k/v: `[b, kv_heads, t, d]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    queries: &QueryRows,
    scale: f64,
    products: AttentionProducts,
) -> Result<Tensor> {
    attention_in_blocks(q, k, v, queries, scale, products, AttentionPath::for_queries(q), MAX_SCORE_ELEMENTS)
}

/// [`attention`] on a chosen path, with the score budget as a parameter. On candle's path each
/// block of query rows `[start, end)` only needs keys `[0, end)`: the causal mask hides the
/// rest, so later keys are not computed at all (about half the score work of a long batch), and
/// the block's mask is built for it alone.
#[allow(clippy::too_many_arguments)]
pub fn attention_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    queries: &QueryRows,
    scale: f64,
    products: AttentionProducts,
    path: AttentionPath,
    max_score_elements: usize,
) -> Result<Tensor> {
    let (b, heads, t, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    if path == AttentionPath::CpuRows {
        // Group the query heads that share one KV head instead of copying K and V n_rep times.
        let q = q.reshape((b, kv_heads, (heads / kv_heads) * t, d))?;
        let limits = match queries.pooled.as_deref() {
            Some(pooled) => cpu::KeyLimits::PerBatchRow(pooled),
            None => cpu::KeyLimits::Causal { first_row: 0 },
        };
        return cpu::attention_f32((&q, k, v), (t, scale as f32), limits, products == AttentionProducts::Bf16);
    }
    let rows_per_block = (max_score_elements / (b * heads * t).max(1)).max(1);
    if rows_per_block >= t {
        let mask = queries.mask_block(0, t, k.dim(2)?, q.device(), q.dtype())?;
        return candle_attention(q, k, v, &mask, scale);
    }
    let mut outputs = Vec::with_capacity(t.div_ceil(rows_per_block));
    for start in (0..t).step_by(rows_per_block) {
        let rows = rows_per_block.min(t - start);
        let keys = start + rows;
        let q_block = q.narrow(2, start, rows)?.contiguous()?;
        let k_block = k.narrow(2, 0, keys)?.contiguous()?;
        let v_block = v.narrow(2, 0, keys)?.contiguous()?;
        let mask = queries.mask_block(start, rows, keys, q.device(), q.dtype())?;
        outputs.push(candle_attention(&q_block, &k_block, &v_block, &mask, scale)?);
    }
    Tensor::cat(&outputs, 2)
}

/// One block through candle's ops: q `[b, heads, rows, d]` against k/v `[b, kv_heads, keys, d]`,
/// with the block's additive `mask`.
fn candle_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, heads, rows, d) = q.dims4()?;
    let (kv_heads, keys) = (k.dim(1)?, k.dim(2)?);
    let n_rep = heads / kv_heads;
    // Group the query heads that share one KV head instead of copying K and V n_rep times.
    let q = q.reshape((b, kv_heads, n_rep * rows, d))?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = scores.reshape((b, heads, rows, keys))?.broadcast_add(mask)?;
    let in_dtype = scores.dtype();
    // Softmax in f32, as transformers' eager and SDPA paths accumulate it.
    let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(in_dtype)?;
    let probs = probs.reshape((b, kv_heads, n_rep * rows, keys))?;
    probs.matmul(v)?.reshape((b, heads, rows, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::layers::RotaryEmbedding;
    use candle_core::Device;

    /// candle's blocked path (GPUs, CPU f16/bf16) against the CPU kernel's per-row attention,
    /// forced on the same f32 inputs: causal with one block, blocks of five rows (the last one
    /// short) and one row per block, and at pooled rows. The two compute in other orders, so
    /// they agree within f32 rounding, not bit for bit.
    #[test]
    fn blocked_candle_attention_equals_the_cpu_rows() {
        let dev = Device::Cpu;
        let (b, heads, kv_heads, t, d) = (2, 4, 2, 37, 8);
        let q = Tensor::randn(0f32, 1.0, (b, heads, t, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, kv_heads, t, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, kv_heads, t, d), &dev).unwrap();
        let (cos, sin) = RotaryEmbedding::new(d, 10_000.0, None).unwrap().tables(t, &dev, DType::F32).unwrap();
        let all = QueryRows::all(&cos, &sin);
        let run = |queries: &QueryRows, q: &Tensor, path, budget| {
            attention_in_blocks(q, &k, &v, queries, 0.3, AttentionProducts::Exact, path, budget).unwrap()
        };
        let rows = run(&all, &q, AttentionPath::CpuRows, MAX_SCORE_ELEMENTS);
        for budget in [usize::MAX, b * heads * t * 5, 1] {
            let blocked = run(&all, &q, AttentionPath::Candle, budget);
            assert_eq!(blocked.dims(), rows.dims());
            let diff = max_diff(&blocked, &rows);
            assert!(diff < 1e-5, "budget {budget}: max |diff| {diff}");
        }
        let pooled = QueryRows::pooled(&[t - 1, 4], t, &cos, &sin).unwrap();
        let q1 = q.narrow(2, 3, 1).unwrap().contiguous().unwrap();
        let (at_rows, at_blocks) =
            (run(&pooled, &q1, AttentionPath::CpuRows, 1), run(&pooled, &q1, AttentionPath::Candle, 1));
        let diff = max_diff(&at_blocks, &at_rows);
        assert!(diff < 1e-5, "pooled: max |diff| {diff}");
        // A mask that let a row see one key too many would move the scores far more than that.
        let shifted = QueryRows::pooled(&[t - 1, 5], t, &cos, &sin).unwrap();
        assert!(max_diff(&run(&shifted, &q1, AttentionPath::Candle, 1), &at_rows) > 1e-3);
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let b = b.to_dtype(DType::F32).unwrap();
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// Runs `products` attention on random f32 q/k/v and returns its largest distance from the
    /// exact f64 path (candle's ops on the additive mask), causal and at the pooled rows `[t-1, 5, 0]`; also returns the pooled output.
    fn attention_against_f64(products: AttentionProducts, d: usize) -> (f32, f32, Tensor, Tensor) {
        let dev = Device::Cpu;
        let (b, heads, kv_heads, t) = (3, 4, 2, 37);
        // Deterministic, roughly uniform values of standard deviation 1 (candle's CPU randn
        // cannot be seeded, and the bf16 bound should not depend on the draw).
        let values = |shape: (usize, usize, usize, usize), seed: usize| {
            let n = shape.0 * shape.1 * shape.2 * shape.3;
            let v: Vec<f32> =
                (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 2003.0 - 0.5) * 3.46).collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let q = values((b, heads, t, d), 1);
        let k = values((b, kv_heads, t, d), 2);
        let v = values((b, kv_heads, t, d), 3);
        let wide = |x: &Tensor| x.to_dtype(DType::F64).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let rope = RotaryEmbedding::new(d, 10_000.0, None).unwrap();
        let (cos, sin) = rope.tables(t, &dev, DType::F32).unwrap();
        let (cos64, sin64) = rope.tables(t, &dev, DType::F64).unwrap();
        let all = QueryRows::all(&cos, &sin);
        let all64 = QueryRows::all(&cos64, &sin64);
        let exact = attention(&wide(&q), &wide(&k), &wide(&v), &all64, scale, AttentionProducts::Exact).unwrap();
        let ours = attention_in_blocks(&q, &k, &v, &all, scale, products, AttentionPath::CpuRows, usize::MAX).unwrap();
        let causal = max_diff(&ours, &exact);
        let pooled = [t - 1, 5, 0];
        let at = QueryRows::pooled(&pooled, t, &cos, &sin).unwrap();
        let at64 = QueryRows::pooled(&pooled, t, &cos64, &sin64).unwrap();
        let q1 = q.narrow(2, 3, 1).unwrap().contiguous().unwrap();
        let ours = attention(&q1, &k, &v, &at, scale, products).unwrap();
        let exact = attention(&wide(&q1), &wide(&k), &wide(&v), &at64, scale, AttentionProducts::Exact).unwrap();
        (causal, max_diff(&ours, &exact), ours, v)
    }

    /// CPU f32 takes the fused scale + mask + softmax pass: the same attention as the mask and
    /// softmax path, causal and at pooled rows.
    #[test]
    fn fused_cpu_softmax_equals_mask_and_softmax() {
        let d = 8;
        let (causal, pooled, out, v) = attention_against_f64(AttentionProducts::Exact, d);
        assert!(causal < 1e-5 && pooled < 1e-5, "max |diff| causal {causal}, pooled {pooled}");
        // Row 2 (pooled at 0) sees key 0 only: its output is v at position 0 exactly.
        let row2 = out.get(2).unwrap().squeeze(1).unwrap();
        let v0 = v.get(2).unwrap().narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        let v0 = Tensor::cat(&[&v0, &v0], 1).unwrap().reshape((4, d)).unwrap();
        assert_eq!(max_diff(&row2, &v0), 0.0);
    }

    /// The bf16 mode's attention products (bf16-rounded operands, f32 sums; any CPU): within
    /// bf16 noise of f64, and visibly not the exact path. Measured: 7.3e-3 causal, 3.8e-3
    /// pooled (the same as the AVX512-BF16 kernel's products gave); the bound is twice the larger.
    #[test]
    fn bf16_attention_products_stay_within_bf16_noise() {
        let (causal, pooled, _, _) = attention_against_f64(AttentionProducts::Bf16, 32);
        eprintln!("bf16 attention products: max |diff| from f64 causal {causal:.2e}, pooled {pooled:.2e}");
        for diff in [causal, pooled] {
            assert!(diff < 1.5e-2 && diff > 1e-5, "max |diff| causal {causal}, pooled {pooled}");
        }
    }
}
