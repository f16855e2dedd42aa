//! Building blocks shared by the decoder architectures: rotary tables, attention core, MLP,
//! and the transformers-exact pooling rule. Everything here works on a right-padded batch
//! `[batch, seq]`, where a causal mask alone keeps padding out of every real token's view.

use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{linear_b, Linear, VarBuilder};
use serde::Deserialize;

use super::cpu;

/// How a decoder's projections (attention and MLP) hold their weights.
#[derive(Clone)]
pub enum LinearKind {
    /// candle tensors in the VarBuilder's dtype (GPUs, CPU f16, candle's CPU bf16).
    Dense,
    /// bf16, packed for the AVX512-BF16 kernel straight from the checkpoint's memory-mapped
    /// files; activations and everything else in f32.
    PackedBf16(Arc<MmapedSafetensors>),
    /// CPU f32: projections transposed straight from the checkpoint's memory-mapped files into
    /// [`cpu::CpuLinear`]'s layout, embedding rows read from them. With `round_bf16`
    /// (`--dtype bf16` on a CPU without AVX512-BF16) those weights are rounded to bf16 on the way
    /// and multiplied in f32 (no CPU without bf16 instructions multiplies bf16 faster than f32),
    /// so bf16 runs at f32's speed with bf16's weights.
    MappedF32 { checkpoint: Arc<MmapedSafetensors>, round_bf16: bool },
}

impl std::fmt::Debug for LinearKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinearKind::Dense => "Dense",
            LinearKind::PackedBf16(_) => "PackedBf16",
            LinearKind::MappedF32 { round_bf16: false, .. } => "MappedF32",
            LinearKind::MappedF32 { round_bf16: true, .. } => "MappedF32 (bf16-rounded)",
        })
    }
}

/// The token embedding table: a candle tensor, or on CPU rows read straight from the
/// memory-mapped checkpoint (a batch looks up a few thousand rows; copying the table at load
/// would fault in fresh pages for all of it: 622 MB in f32 for Qwen3's 151,936 × 1,024).
#[derive(Clone)]
pub enum TokenEmbedding {
    Table(candle_nn::Embedding),
    /// Rows of `name` in the checkpoint in f32; with `round_bf16` rounded to bf16 as the bf16
    /// model's own table would be.
    Mapped {
        checkpoint: Arc<MmapedSafetensors>,
        name: String,
        hidden: usize,
        round_bf16: bool,
    },
}

impl std::fmt::Debug for TokenEmbedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenEmbedding::Table(table) => f.debug_tuple("Table").field(table).finish(),
            TokenEmbedding::Mapped { name, hidden, round_bf16, .. } => f
                .debug_struct("Mapped")
                .field("name", name)
                .field("hidden", hidden)
                .field("round_bf16", round_bf16)
                .finish(),
        }
    }
}

impl TokenEmbedding {
    pub fn load(vocab: usize, hidden: usize, vb: VarBuilder, kind: &LinearKind) -> Result<Self> {
        let (checkpoint, round_bf16) = match kind {
            LinearKind::Dense => return Ok(Self::Table(candle_nn::embedding(vocab, hidden, vb)?)),
            LinearKind::PackedBf16(checkpoint) => (checkpoint, true),
            LinearKind::MappedF32 { checkpoint, round_bf16 } => (checkpoint, *round_bf16),
        };
        let name = format!("{}.weight", vb.prefix());
        cpu::check_mapped_embedding(checkpoint, &name, hidden, vocab)?;
        Ok(Self::Mapped { checkpoint: checkpoint.clone(), name, hidden, round_bf16 })
    }
}

impl Module for TokenEmbedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            TokenEmbedding::Table(table) => table.forward(ids),
            TokenEmbedding::Mapped { checkpoint, name, hidden, round_bf16 } => {
                cpu::mapped_embedding(checkpoint, name, *hidden, ids, *round_bf16)
            }
        }
    }
}

/// A projection: candle's `Linear`, its CPU f32 form, or the bf16 kernel's packed weights.
#[derive(Debug, Clone)]
pub enum Proj {
    Dense(Linear),
    /// CPU f32, batch-invariant (see [`cpu::CpuLinear`]).
    CpuF32(cpu::CpuLinear),
    PackedBf16(Arc<cpu::PackedLinear>),
}

impl Proj {
    pub fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder, kind: &LinearKind) -> Result<Self> {
        match kind {
            LinearKind::PackedBf16(checkpoint) => {
                let packed = cpu::PackedLinear::load(in_dim, out_dim, bias, vb, checkpoint)?;
                Ok(Proj::PackedBf16(Arc::new(packed)))
            }
            LinearKind::MappedF32 { checkpoint, round_bf16 } => {
                let bias = if bias {
                    Some(vb.get_with_hints_dtype(out_dim, "bias", Default::default(), DType::F32)?)
                } else {
                    None
                };
                let name = format!("{}.weight", vb.prefix());
                let linear = cpu::CpuLinear::from_checkpoint(checkpoint, &name, (in_dim, out_dim), bias, *round_bf16)?;
                Ok(Proj::CpuF32(linear))
            }
            LinearKind::Dense => {
                let linear = linear_b(in_dim, out_dim, bias, vb)?;
                if linear.weight().device().is_cpu() && linear.weight().dtype() == DType::F32 {
                    // A CPU f32 model built from tensors rather than a checkpoint (tests).
                    return Ok(Proj::CpuF32(cpu::CpuLinear::new(linear)?));
                }
                Ok(Proj::Dense(linear))
            }
        }
    }
}

impl Module for Proj {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Proj::Dense(linear) => linear.forward(xs),
            Proj::CpuF32(linear) => linear.forward(xs),
            Proj::PackedBf16(packed) => packed.forward(xs),
        }
    }
}

/// `rope_scaling` / `rope_parameters` as written in config.json.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RopeParameters {
    #[serde(alias = "type")]
    pub rope_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
}

/// Inverse frequencies of the rotary embedding, computed in f32 exactly as transformers does
/// (its rope init runs in float32; computing in f64 shifts angles at long positions by ~1e-4).
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    pub fn new(head_dim: usize, theta: f64, scaling: Option<&RopeParameters>) -> Result<Self> {
        let dim = head_dim as f32;
        let base = theta as f32;
        let mut inv_freq: Vec<f32> = (0..head_dim).step_by(2).map(|i| 1.0f32 / base.powf(i as f32 / dim)).collect();
        let rope_type = scaling.and_then(|s| s.rope_type.as_deref()).unwrap_or("default");
        match rope_type {
            "default" => {}
            "linear" => {
                let factor = scaling.and_then(|s| s.factor).unwrap_or(1.0) as f32;
                inv_freq.iter_mut().for_each(|f| *f /= factor);
            }
            "llama3" => {
                let s = scaling.expect("llama3 rope type comes from a scaling block");
                let need = |v: Option<f64>, name: &str| {
                    v.ok_or_else(|| candle_core::Error::Msg(format!("llama3 rope scaling needs `{name}`")))
                };
                let factor = need(s.factor, "factor")? as f32;
                let low = need(s.low_freq_factor, "low_freq_factor")? as f32;
                let high = need(s.high_freq_factor, "high_freq_factor")? as f32;
                let old_ctx = s.original_max_position_embeddings.ok_or_else(|| {
                    candle_core::Error::Msg("llama3 rope scaling needs `original_max_position_embeddings`".into())
                })? as f32;
                let low_freq_wavelen = old_ctx / low;
                let high_freq_wavelen = old_ctx / high;
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                for f in inv_freq.iter_mut() {
                    let wavelen = two_pi / *f;
                    let scaled = if wavelen > low_freq_wavelen { *f / factor } else { *f };
                    let is_medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                    *f = if is_medium {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
            other => {
                candle_core::bail!("unsupported rope scaling type `{other}` (supported: default, linear, llama3)")
            }
        }
        Ok(Self { inv_freq })
    }

    /// From config.json: `rope_parameters` (newer transformers, theta included) wins over
    /// `rope_scaling` + `rope_theta`.
    pub fn from_config(
        head_dim: usize,
        rope_theta: Option<f64>,
        rope_scaling: Option<&RopeParameters>,
        rope_parameters: Option<&RopeParameters>,
        default_theta: f64,
    ) -> Result<Self> {
        let theta = rope_parameters.and_then(|p| p.rope_theta).or(rope_theta).unwrap_or(default_theta);
        Self::new(head_dim, theta, rope_parameters.or(rope_scaling))
    }

    /// `(cos, sin)` tables of shape `[seq_len, head_dim / 2]` for positions `0..seq_len`.
    pub fn tables(&self, seq_len: usize, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(seq_len * half);
        let mut sin = Vec::with_capacity(seq_len * half);
        for pos in 0..seq_len {
            for &f in &self.inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (seq_len, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (seq_len, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

/// Additive causal mask `[1, 1, seq, seq]`: 0 on and below the diagonal, -inf above.
/// With right padding this is the whole mask: real tokens never see the pads behind them, and
/// what pad positions compute is never pooled. Built on the device (no `seq²` upload per batch).
pub fn causal_mask(seq_len: usize, device: &Device, dtype: DType) -> Result<Tensor> {
    let positions = Tensor::arange(0u32, seq_len as u32, device)?;
    let future = positions.unsqueeze(0)?.broadcast_gt(&positions.unsqueeze(1)?)?; // key j > query i
    let neg_inf = Tensor::new(f32::NEG_INFINITY, device)?.to_dtype(dtype)?.broadcast_as((seq_len, seq_len))?;
    let zero = Tensor::zeros((seq_len, seq_len), dtype, device)?;
    future.where_cond(&neg_inf, &zero)?.reshape((1, 1, seq_len, seq_len))
}

/// Which positions of a batch a layer computes queries (and everything after attention) for.
/// Keys and values always cover every position. The last layer only matters at the pooled
/// token of each row, so it runs its query projection, attention, output projection and MLP on
/// one position per row instead of all of them (the same numbers, a layer's work saved).
pub struct QueryRows {
    /// Rotary tables for the query positions: `[t, d/2]` (all) or `[b, 1, d/2]` (pooled).
    pub cos: Tensor,
    pub sin: Tensor,
    /// Additive mask: `[1, 1, t, t]` causal (all) or `[b, 1, 1, t]` hiding keys after each row's
    /// pooled token (pooled).
    pub mask: Tensor,
    /// `row × t + position` of each pooled token; `None` for all positions.
    select: Option<Tensor>,
    /// The same mask as key limits, for the CPU's fused softmax: query row `r` of batch row `i`
    /// sees keys `0..=r` (all positions, causal) or `0..=pooled[i]` (pooled).
    pooled: Option<Vec<u32>>,
    /// The positions that can reach a score, when running the position-wise steps on those
    /// alone pays (see [`LivePositions`]).
    live: Option<Arc<LivePositions>>,
}

impl QueryRows {
    pub fn all(cos: &Tensor, sin: &Tensor, mask: Tensor) -> Self {
        Self { cos: cos.clone(), sin: sin.clone(), mask, select: None, pooled: None, live: None }
    }

    /// These query rows, with the position-wise steps run on `live` positions only.
    pub fn with_live(self, live: Option<Arc<LivePositions>>) -> Self {
        Self { live, ..self }
    }

    /// `xs` `[b, t, h]` ready for position-wise steps (projections, the MLP): only its live
    /// positions, packed, when that pays; as it is otherwise (and for the pooled rows `[b, 1, h]`).
    pub fn packed(&self, xs: &Tensor) -> Result<Packed> {
        match &self.live {
            Some(live) if xs.rank() == 3 && xs.dim(1)? == live.t => {
                Ok(Packed { input: live.pack(xs)?, live: Some(live.clone()) })
            }
            _ => Ok(Packed { input: xs.clone(), live: None }),
        }
    }

    /// The projections' inputs from a layer's normed input `xs` `[b, t, h]`: the queries' (the
    /// rows these select) and the keys' and values' (every position), each [`packed`](Self::packed)
    /// (one packing serves both when every position is queried).
    pub fn projection_inputs(&self, xs: &Tensor) -> Result<(Packed, Packed)> {
        let keys = self.packed(xs)?;
        let queries = if self.select.is_none() { keys.clone() } else { self.packed(&self.select(xs)?)? };
        Ok((queries, keys))
    }

    /// Queries at `pooled[row]` of each row; `cos`/`sin` are the `[t, d/2]` tables.
    pub fn pooled(pooled: &[usize], t: usize, cos: &Tensor, sin: &Tensor) -> Result<Self> {
        let device = cos.device();
        let b = pooled.len();
        let positions = Tensor::from_vec(pooled.iter().map(|&p| p as u32).collect::<Vec<_>>(), b, device)?;
        let flat: Vec<u32> = pooled.iter().enumerate().map(|(row, &p)| (row * t + p) as u32).collect();
        let select = Tensor::from_vec(flat, b, device)?;
        let rope_rows = |table: &Tensor| table.index_select(&positions, 0)?.unsqueeze(1)?.contiguous();
        let keys = Tensor::arange(0u32, t as u32, device)?.unsqueeze(0)?; // [1, t]
        let after = keys.broadcast_gt(&positions.unsqueeze(1)?)?; // [b, t]: key j > pooled
        let neg_inf = Tensor::new(f32::NEG_INFINITY, device)?.to_dtype(cos.dtype())?.broadcast_as((b, t))?;
        let zero = Tensor::zeros((b, t), cos.dtype(), device)?;
        let mask = after.where_cond(&neg_inf, &zero)?.reshape((b, 1, 1, t))?;
        let pooled = Some(pooled.iter().map(|&p| p as u32).collect());
        Ok(Self { cos: rope_rows(cos)?, sin: rope_rows(sin)?, mask, select: Some(select), pooled, live: None })
    }

    /// The query rows of `xs` `[b, t, h]`: all of it, or `[b, 1, h]` at the pooled tokens.
    pub fn select(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.select {
            None => Ok(xs.clone()),
            Some(idx) => {
                let (b, t, h) = xs.dims3()?;
                xs.reshape((b * t, h))?.index_select(idx, 0)?.reshape((b, 1, h))
            }
        }
    }
}

/// The positions of a batch that can reach a score: each row's tokens up to its pooled token.
/// The rest (right padding, and whatever follows the pooled token) is never seen by a pooled
/// token (attention is causal), so the position-wise steps (projections, the MLP: most of the
/// work) can skip it. A row's results do not change: the CPU's f32 projections give a row the
/// same bits whatever the other rows of the product (see [`cpu::CpuLinear`]).
#[derive(Debug)]
pub struct LivePositions {
    /// Live positions of each batch row, from position 0.
    lengths: Vec<usize>,
    /// The padded width.
    t: usize,
}

impl LivePositions {
    /// Skipped positions must be at least this share of the batch (1/n) to pay for the copies
    /// into and out of the packed form (about 3% of a layer's time on a 0.6B model).
    const MIN_DEAD_SHARE: usize = 16;

    /// The live positions of a batch whose rows are scored at `pooled`, when skipping the rest
    /// pays: on CPU, with at least 1/16 of the positions dead. (GPUs keep the padded form.)
    pub fn worth_packing(pooled: &[usize], t: usize, device: &Device) -> Option<Arc<Self>> {
        let lengths: Vec<usize> = pooled.iter().map(|&p| (p + 1).min(t)).collect();
        let dead = pooled.len() * t - lengths.iter().sum::<usize>();
        (device.is_cpu() && dead * Self::MIN_DEAD_SHARE >= pooled.len() * t).then(|| Arc::new(Self { lengths, t }))
    }

    /// `[b, t, h]` → `[live positions, h]`, rows in order.
    fn pack(&self, xs: &Tensor) -> Result<Tensor> {
        let parts = self
            .lengths
            .iter()
            .enumerate()
            .map(|(row, &len)| xs.get(row)?.narrow(0, 0, len))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }

    /// `[live positions, o]` → `[b, t, o]`, zeros at the dead positions.
    fn unpack(&self, ys: &Tensor) -> Result<Tensor> {
        let o = ys.dim(1)?;
        let mut parts = Vec::with_capacity(2 * self.lengths.len());
        let mut offset = 0;
        for &len in &self.lengths {
            parts.push(ys.narrow(0, offset, len)?);
            if len < self.t {
                parts.push(Tensor::zeros((self.t - len, o), ys.dtype(), ys.device())?);
            }
            offset += len;
        }
        Tensor::cat(&parts, 0)?.reshape((self.lengths.len(), self.t, o))
    }
}

/// The input of position-wise steps, packed to the live positions or as it was.
#[derive(Clone)]
pub struct Packed {
    input: Tensor,
    live: Option<Arc<LivePositions>>,
}

impl Packed {
    /// `step` on the input, its output back in the input's `[b, t, ·]` form.
    pub fn apply(&self, step: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let out = step(&self.input)?;
        match &self.live {
            Some(live) => live.unpack(&out),
            None => Ok(out),
        }
    }
}

/// Runs the decoder stack of a reward model on embedded tokens `xs` `[b, t, h]` and returns
/// the pooled hidden states `[b, 1, h]`: every layer but the last on all positions, the last
/// only at each row's pooled token (nothing else of it is ever scored). `layer(i, xs, cos,
/// sin, queries)` runs layer `i`.
pub fn run_decoder(
    xs: Tensor,
    layers: usize,
    pooled: &[usize],
    rope: &RotaryEmbedding,
    layer: impl Fn(usize, &Tensor, &Tensor, &Tensor, &QueryRows) -> Result<Tensor>,
) -> Result<Tensor> {
    if layers == 0 {
        candle_core::bail!("the checkpoint has no decoder layers");
    }
    let (_, t, _) = xs.dims3()?;
    let (cos, sin) = rope.tables(t, xs.device(), xs.dtype())?;
    let live = LivePositions::worth_packing(pooled, t, xs.device());
    let all = QueryRows::all(&cos, &sin, causal_mask(t, xs.device(), xs.dtype())?).with_live(live.clone());
    let mut xs = xs;
    for i in 0..layers - 1 {
        xs = layer(i, &xs, &cos, &sin, &all)?;
    }
    let at_pooled = QueryRows::pooled(pooled, t, &cos, &sin)?.with_live(live);
    layer(layers - 1, &xs, &cos, &sin, &at_pooled)
}

/// Most attention scores held at once, in elements (`b × heads × query rows × keys`): 64M,
/// 256 MiB in f32. Longer batches are computed a block of query rows at a time, so memory
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
    attention_in_blocks(q, k, v, queries, scale, products, MAX_SCORE_ELEMENTS)
}

/// [`attention`] with the score budget as a parameter. Each block of query rows
/// `[start, end)` only needs keys `[0, end)`: the causal mask hides the rest, so later keys are
/// not computed at all (about half the score work of a long batch).
pub fn attention_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    queries: &QueryRows,
    scale: f64,
    products: AttentionProducts,
    max_score_elements: usize,
) -> Result<Tensor> {
    let (b, heads, t, _) = q.dims4()?;
    let rows_per_block = (max_score_elements / (b * heads * t).max(1)).max(1);
    // The CPU f32 attention holds one row of scores per task: no need for blocks (whose key
    // counts would follow the batch's shape).
    let cpu_f32 = q.device().is_cpu() && q.dtype() == DType::F32;
    if rows_per_block >= t || cpu_f32 {
        let visible = Visible { mask: &queries.mask, first_row: 0, pooled: queries.pooled.as_deref() };
        return attention_block(q, k, v, &visible, scale, products);
    }
    let mut outputs = Vec::with_capacity(t.div_ceil(rows_per_block));
    for start in (0..t).step_by(rows_per_block) {
        let rows = rows_per_block.min(t - start);
        let keys = start + rows;
        let q_block = q.narrow(2, start, rows)?.contiguous()?;
        let k_block = k.narrow(2, 0, keys)?.contiguous()?;
        let v_block = v.narrow(2, 0, keys)?.contiguous()?;
        let mask = queries.mask.narrow(2, start, rows)?.narrow(3, 0, keys)?;
        let visible = Visible { mask: &mask, first_row: start, pooled: queries.pooled.as_deref() };
        outputs.push(attention_block(&q_block, &k_block, &v_block, &visible, scale, products)?);
    }
    Tensor::cat(&outputs, 2)
}

/// The keys a block of query rows sees: the additive mask, and the same as limits.
struct Visible<'a> {
    mask: &'a Tensor,
    /// Position of the block's first query row (causal case).
    first_row: usize,
    /// Each batch row's pooled position (the pooled case: one query row per batch row).
    pooled: Option<&'a [u32]>,
}

/// One block: q `[b, heads, rows, d]` against k/v `[b, kv_heads, keys, d]`.
fn attention_block(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    visible: &Visible,
    scale: f64,
    products: AttentionProducts,
) -> Result<Tensor> {
    let (b, heads, rows, d) = q.dims4()?;
    let (kv_heads, keys) = (k.dim(1)?, k.dim(2)?);
    let n_rep = heads / kv_heads;
    // Group the query heads that share one KV head instead of copying K and V n_rep times.
    let q = q.reshape((b, kv_heads, n_rep * rows, d))?;
    if q.device().is_cpu() && q.dtype() == DType::F32 {
        let limits = match visible.pooled {
            Some(pooled) => cpu::KeyLimits::PerBatchRow(pooled),
            None => cpu::KeyLimits::Causal { first_row: visible.first_row },
        };
        return cpu::attention_f32((&q, k, v), (rows, scale as f32), limits, products == AttentionProducts::Bf16);
    }
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = scores.reshape((b, heads, rows, keys))?.broadcast_add(visible.mask)?;
    let in_dtype = scores.dtype();
    // Softmax in f32, as transformers' eager and SDPA paths accumulate it.
    let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(in_dtype)?;
    let probs = probs.reshape((b, kv_heads, n_rep * rows, keys))?;
    probs.matmul(v)?.reshape((b, heads, rows, d))
}

/// RMSNorm as transformers computes it: normalise in f32, cast back, then scale by the weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
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

/// Position transformers pools for one row: the rightmost token that is not `pad_token_id`
/// (index 0 when every token is the pad id, which is what its argmax over zeros yields).
pub fn pooled_index(ids: &[u32], pad_token_id: Option<u32>) -> usize {
    match pad_token_id {
        None => ids.len().saturating_sub(1),
        Some(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
    }
}

/// The classification head on the pooled hidden states `[b, 1, h]` (what the last layer
/// computes): final norm and `score`, as f32 logits `[b]`. Norming only the pooled rows equals
/// transformers' norm-everything-then-pool.
pub fn score_rows(pooled_hidden: &Tensor, norm: &RmsNorm, score: &Linear) -> Result<Tensor> {
    let rows = norm.forward(&pooled_hidden.squeeze(1)?)?;
    if rows.device().is_cpu() && rows.dtype() == DType::F32 && score.bias().is_none() {
        return cpu::score_head_f32(&rows, score.weight());
    }
    score.forward(&rows)?.squeeze(1)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packing keeps each row's live positions in order and puts them back in place, zeros at
    /// the dead ones; batches with little padding are left as they are.
    #[test]
    fn live_positions_pack_and_unpack() {
        let dev = Device::Cpu;
        assert!(LivePositions::worth_packing(&[3, 3], 4, &dev).is_none(), "no dead position");
        assert!(LivePositions::worth_packing(&[15, 15, 15, 14], 16, &dev).is_none(), "1 of 64 dead");
        let live = LivePositions::worth_packing(&[3, 0, 2], 4, &dev).expect("6 of 12 dead");
        let xs = Tensor::arange(0f32, 24.0, &dev).unwrap().reshape((3, 4, 2)).unwrap();
        let packed = live.pack(&xs).unwrap();
        let rows: Vec<Vec<f32>> = packed.to_vec2().unwrap();
        let want = [[0., 1.], [2., 3.], [4., 5.], [6., 7.], [8., 9.], [16., 17.], [18., 19.], [20., 21.]];
        assert_eq!(rows, want.map(|r| r.to_vec()).to_vec());
        let back: Vec<f32> = live.unpack(&(packed * 10.0).unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let zero_after = [4, 1, 3];
        for (row, &len) in zero_after.iter().enumerate() {
            for pos in 0..4 {
                for c in 0..2 {
                    let want = if pos < len { 10.0 * (row * 8 + pos * 2 + c) as f32 } else { 0.0 };
                    assert_eq!(back[row * 8 + pos * 2 + c], want, "row {row} position {pos}");
                }
            }
        }
        let queries = QueryRows::all(&xs, &xs, xs.clone()).with_live(Some(live));
        let pooled_rows = Tensor::zeros((3, 1, 2), DType::F32, &dev).unwrap();
        assert_eq!(queries.packed(&pooled_rows).unwrap().input.dims(), [3, 1, 2], "[b, 1, h] is not packed");
        assert_eq!(queries.packed(&xs).unwrap().input.dims(), [8, 2]);
    }

    fn llama3(theta: Option<f64>) -> RopeParameters {
        RopeParameters {
            rope_type: Some("llama3".into()),
            rope_theta: theta,
            factor: Some(8.0),
            low_freq_factor: Some(1.0),
            high_freq_factor: Some(4.0),
            original_max_position_embeddings: Some(8192),
        }
    }

    #[test]
    fn rope_parameters_key_equals_rope_scaling_plus_theta() {
        let old = RotaryEmbedding::from_config(128, Some(500000.0), Some(&llama3(None)), None, 10_000.0).unwrap();
        let new = RotaryEmbedding::from_config(128, None, None, Some(&llama3(Some(500000.0))), 10_000.0).unwrap();
        assert_eq!(old.inv_freq, new.inv_freq);
        let plain = RotaryEmbedding::from_config(128, Some(500000.0), None, None, 10_000.0).unwrap();
        // High frequencies are untouched, the lowest are divided by the factor.
        assert_eq!(old.inv_freq[0], plain.inv_freq[0]);
        assert!((old.inv_freq[63] * 8.0 - plain.inv_freq[63]).abs() <= plain.inv_freq[63] * 1e-6);
    }

    #[test]
    fn unknown_rope_type_is_an_error() {
        let yarn = RopeParameters { rope_type: Some("yarn".into()), ..Default::default() };
        let err = RotaryEmbedding::from_config(64, None, Some(&yarn), None, 10_000.0).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
    }

    #[test]
    fn causal_mask_hides_the_future_only() {
        let mask = causal_mask(3, &Device::Cpu, DType::F32).unwrap();
        let rows: Vec<Vec<f32>> = mask.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(rows, vec![vec![0.0, inf, inf], vec![0.0, 0.0, inf], vec![0.0, 0.0, 0.0]]);
    }

    #[test]
    fn attention_in_blocks_equals_one_block() {
        let dev = Device::Cpu;
        let (b, heads, kv_heads, t, d) = (2, 4, 2, 37, 8);
        let q = Tensor::randn(0f32, 1.0, (b, heads, t, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, kv_heads, t, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, kv_heads, t, d), &dev).unwrap();
        let (cos, sin) = RotaryEmbedding::new(d, 10_000.0, None).unwrap().tables(t, &dev, DType::F32).unwrap();
        let all = QueryRows::all(&cos, &sin, causal_mask(t, &dev, DType::F32).unwrap());
        let whole = attention_in_blocks(&q, &k, &v, &all, 0.3, AttentionProducts::Exact, usize::MAX).unwrap();
        // 5 query rows per block: 8 blocks, the last one short.
        let blocked = attention_in_blocks(&q, &k, &v, &all, 0.3, AttentionProducts::Exact, b * heads * t * 5).unwrap();
        assert_eq!(blocked.dims(), whole.dims());
        let diff = (blocked - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "max |diff| {diff}");
        // One query row per block, the smallest budget.
        let rows = attention_in_blocks(&q, &k, &v, &all, 0.3, AttentionProducts::Exact, 1).unwrap();
        let diff = (rows - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "max |diff| {diff}");
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let b = b.to_dtype(DType::F32).unwrap();
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// Runs `products` attention on random f32 q/k/v and returns its largest distance from the
    /// exact f64 path (candle's ops on the additive mask), causal (whole and in blocks of query
    /// rows) and at the pooled rows `[t-1, 5, 0]`; also returns the pooled output.
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
        let all = QueryRows::all(&cos, &sin, causal_mask(t, &dev, DType::F32).unwrap());
        let all64 = QueryRows::all(&cos64, &sin64, causal_mask(t, &dev, DType::F64).unwrap());
        let exact = attention(&wide(&q), &wide(&k), &wide(&v), &all64, scale, AttentionProducts::Exact).unwrap();
        let mut causal = 0f32;
        for budget in [usize::MAX, b * heads * t * 5, 1] {
            let ours = attention_in_blocks(&q, &k, &v, &all, scale, products, budget).unwrap();
            causal = causal.max(max_diff(&ours, &exact));
        }
        let pooled = [t - 1, 5, 0];
        let at = QueryRows::pooled(&pooled, t, &cos, &sin).unwrap();
        let at64 = QueryRows::pooled(&pooled, t, &cos64, &sin64).unwrap();
        let q1 = q.narrow(2, 3, 1).unwrap().contiguous().unwrap();
        let ours = attention(&q1, &k, &v, &at, scale, products).unwrap();
        let exact = attention(&wide(&q1), &wide(&k), &wide(&v), &at64, scale, AttentionProducts::Exact).unwrap();
        (causal, max_diff(&ours, &exact), ours, v)
    }

    /// CPU f32 takes the fused scale + mask + softmax pass: the same attention as the mask and
    /// softmax path, causal (whole and in blocks) and at pooled rows.
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

    #[test]
    fn pooling_is_the_rightmost_non_pad_token() {
        assert_eq!(pooled_index(&[5, 6, 7], Some(9)), 2);
        assert_eq!(pooled_index(&[5, 9, 7, 9], Some(9)), 2);
        assert_eq!(pooled_index(&[9, 9], Some(9)), 0);
        assert_eq!(pooled_index(&[5, 6], None), 1);
    }
}
