//! Attention on CPU in f32, one query row at a time over exactly the keys that row sees. No sum
//! runs over padding or over keys past a row's causal limit, and each sum runs in one fixed
//! order (lane arrays over the head dimension, keys in order), so a row's attention output is
//! the same bits whatever the batch around it: its batch mates, the padded width, the batch size.
//! (Matrix products over the padded key axis round differently as that axis grows: `gemm` splits
//! a long reduction into blocks whose size follows its length.)
//!
//! Work per query row is `visible × head_dim` twice; rows run in parallel. Memory: one row of
//! scores per task, so no blocking of query rows is needed.

use rayon::prelude::*;

use super::fast_ops::{dispatch_simd, softmax_row, KeyLimits};

/// Lanes of the dot products' partial sums (16: one AVX-512 register, two AVX2 registers).
const LANES: usize = 16;

/// The shape of one call: `groups` (batch rows × KV heads) of `grouped_rows` query rows (the
/// heads sharing a KV head × query positions) against `keys` keys of `d` values.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub kv_heads: usize,
    pub grouped_rows: usize,
    /// Query positions per head (`grouped_rows` = heads per KV head × `rows`).
    pub rows: usize,
    pub keys: usize,
    pub d: usize,
}

/// `softmax(scale · q kᵀ) v` per query row over its visible keys: `q` `[batch, kv_heads,
/// grouped_rows, d]`, `k` and `v` `[batch, kv_heads, keys, d]`, all contiguous f32; returns
/// `[batch, kv_heads, grouped_rows, d]`. With `round_bf16`, q, k, v and the probabilities are
/// rounded to bf16 first (what transformers' bf16 attention multiplies), sums stay f32.
pub fn attention(
    (q, k, v): (&[f32], &[f32], &[f32]),
    shape: Shape,
    scale: f32,
    limits: KeyLimits,
    round_bf16: bool,
) -> Vec<f32> {
    let Shape { batch, kv_heads, grouped_rows, rows, keys, d } = shape;
    assert!(q.len() == batch * kv_heads * grouped_rows * d && k.len() == batch * kv_heads * keys * d);
    assert_eq!(v.len(), k.len());
    let rounded = |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect() };
    let (q, k, v) = if round_bf16 {
        (std::borrow::Cow::Owned(rounded(q)), std::borrow::Cow::Owned(rounded(k)), std::borrow::Cow::Owned(rounded(v)))
    } else {
        (std::borrow::Cow::Borrowed(q), std::borrow::Cow::Borrowed(k), std::borrow::Cow::Borrowed(v))
    };
    let mut out = vec![0f32; q.len()];
    out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |scores, (row, out)| {
        let group = row / grouped_rows;
        let r = row % grouped_rows % rows;
        let last = match limits {
            KeyLimits::Causal { first_row } => first_row + r,
            KeyLimits::PerBatchRow(limits) => limits[group / kv_heads] as usize,
        };
        let visible = (last + 1).min(keys);
        let (ks, vs) = (&k[group * keys * d..][..visible * d], &v[group * keys * d..][..visible * d]);
        scores.clear();
        scores.resize(visible, 0.0);
        dots(&q[row * d..][..d], ks, scores);
        softmax_row(scores, visible, scale);
        if round_bf16 {
            scores.iter_mut().for_each(|p| *p = half::bf16::from_f32(*p).to_f32());
        }
        weighted_sum(scores, vs, out);
    });
    out
}

// `scores[j] = q · keys[j]` (also the reward head's one dot per row).
dispatch_simd!(pub(crate) dots: fn(q: &[f32], keys: &[f32], scores: &mut [f32]) => dots_body);

/// `scores[j] = q · keys[j]`, each over `LANES` partial sums added in a fixed order.
#[inline(always)]
fn dots_body(q: &[f32], keys: &[f32], scores: &mut [f32]) {
    let d = q.len();
    for (score, key) in scores.iter_mut().zip(keys.chunks_exact(d)) {
        let mut acc = [0f32; LANES];
        let mut qs = q.chunks_exact(LANES);
        let mut ks = key.chunks_exact(LANES);
        for (qc, kc) in (&mut qs).zip(&mut ks) {
            for l in 0..LANES {
                acc[l] += qc[l] * kc[l];
            }
        }
        for (l, (a, b)) in qs.remainder().iter().zip(ks.remainder()).enumerate() {
            acc[l] += a * b;
        }
        *score = pairwise(acc);
    }
}

/// The sum of the lanes, in a fixed tree order.
#[inline(always)]
fn pairwise(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0]
}

dispatch_simd!(weighted_sum: fn(probs: &[f32], values: &[f32], out: &mut [f32]) => weighted_sum_body);

/// `out = Σ_j probs[j] · values[j]`, keys in order.
#[inline(always)]
fn weighted_sum_body(probs: &[f32], values: &[f32], out: &mut [f32]) {
    let d = out.len();
    out.fill(0.0);
    for (&p, value) in probs.iter().zip(values.chunks_exact(d)) {
        for (o, x) in out.iter_mut().zip(value) {
            *o += p * x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        super::super::test_values(len, seed).iter().map(|v| v * 3.0).collect()
    }

    /// A row's output depends on its own keys only: the same query and keys padded to another
    /// width, next to other batch rows, give the same bits.
    #[test]
    fn a_row_is_the_same_bits_at_any_padded_width_and_batch() {
        let (d, kv_heads, rows) = (40, 2, 3);
        let grouped_rows = 2 * rows;
        let run = |batch: usize, keys: usize, first: &[f32], first_kv: (&[f32], &[f32])| {
            let mut q = first.to_vec();
            q.extend(values((batch - 1) * kv_heads * grouped_rows * d, 9));
            let widen = |x: &[f32], seed| {
                let mut out = Vec::new();
                for g in 0..kv_heads {
                    out.extend_from_slice(&x[g * 5 * d..(g + 1) * 5 * d]);
                    out.extend(values((keys - 5) * d, seed + g));
                }
                out.extend(values((batch - 1) * kv_heads * keys * d, seed + 7));
                out
            };
            let (k, v) = (widen(first_kv.0, 20), widen(first_kv.1, 30));
            let shape = Shape { batch, kv_heads, grouped_rows, rows, keys, d };
            let pooled = vec![4u32; batch];
            let causal = attention((&q, &k, &v), shape, 0.3, KeyLimits::Causal { first_row: 2 }, false);
            let at_pooled = attention((&q, &k, &v), shape, 0.3, KeyLimits::PerBatchRow(&pooled), true);
            let first_row = kv_heads * grouped_rows * d;
            (causal[..first_row].to_vec(), at_pooled[..first_row].to_vec())
        };
        let q = values(kv_heads * grouped_rows * d, 1);
        let (k, v) = (values(kv_heads * 5 * d, 2), values(kv_heads * 5 * d, 3));
        let alone = run(1, 5, &q, (&k, &v));
        for (batch, keys) in [(1, 6), (3, 5), (4, 37), (2, 700)] {
            let other = run(batch, keys, &q, (&k, &v));
            let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same(&alone.0, &other.0), "causal, batch {batch}, {keys} keys");
            assert!(same(&alone.1, &other.1), "pooled bf16, batch {batch}, {keys} keys");
        }
    }

    /// Against a plain f64 softmax attention.
    #[test]
    fn matches_an_f64_reference() {
        let (d, keys) = (24, 9);
        let shape = Shape { batch: 1, kv_heads: 1, grouped_rows: 2, rows: 2, keys, d };
        let (q, k, v) = (values(2 * d, 1), values(keys * d, 2), values(keys * d, 3));
        let out = attention((&q, &k, &v), shape, 0.2, KeyLimits::Causal { first_row: 3 }, false);
        for r in 0..2 {
            let visible = 3 + r + 1;
            let s: Vec<f64> = (0..visible)
                .map(|j| 0.2 * (0..d).map(|i| q[r * d + i] as f64 * k[j * d + i] as f64).sum::<f64>())
                .collect();
            let max = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for i in 0..d {
                let want: f64 = (0..visible).map(|j| e[j] / sum * v[j * d + i] as f64).sum();
                let got = out[r * d + i] as f64;
                assert!((got - want).abs() < 1e-5, "row {r} col {i}: {got} vs {want}");
            }
        }
    }
}
