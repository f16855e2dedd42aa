//! Attention on CPU in f32, each query row over exactly the keys that row sees. No sum runs over
//! padding or over keys past a row's causal limit, and each sum runs in one fixed order (a dot
//! product over the head dimension in order, the weighted sum over keys in order, both with
//! fused multiply-adds), so a row's attention output is the same bits whatever the batch around
//! it: its batch mates, the padded width, the batch size. (Matrix products over the padded key
//! axis round differently as that axis grows: `gemm` splits a long reduction into blocks whose
//! size follows its length.)
//!
//! Speed: the query rows of one KV head go through in blocks of [`ROW_BLOCK`], so every key and
//! value read from memory serves that many rows, and the keys are transposed once per KV head so
//! that the score kernel runs [`KEY_BLOCK`] keys per register pass (no horizontal sums). A
//! block's rows see different numbers of keys (causal): the scores run to the widest row (the
//! extra ones are never read), the weighted sum runs the keys all rows share together and each
//! row's remaining keys alone, continuing the same chain of multiply-adds, so the split does not
//! change a bit.

use std::ops::Range;

use rayon::prelude::*;

use super::fast_ops::{dispatch_simd, softmax_row, KeyLimits};

/// Lanes of the reward head's dot products' partial sums (16: one AVX-512 register, two AVX2
/// registers).
const LANES: usize = 16;
/// Query rows computed together (4 rows × 16 lanes: eight AVX2 accumulators, all FMA units busy).
const ROW_BLOCK: usize = 4;
/// Keys per pass of the score kernel.
const KEY_BLOCK: usize = 16;
/// Output columns per pass of the weighted sum.
const COLUMN_BLOCK: usize = 16;

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
    // Keys seen by query row `row` of `group`.
    let visible = |group: usize, row: usize| -> usize {
        let last = match limits {
            KeyLimits::Causal { first_row } => first_row + row % rows,
            KeyLimits::PerBatchRow(limits) => limits[group / kv_heads] as usize,
        };
        (last + 1).min(keys)
    };
    let mut out = vec![0f32; q.len()];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(grouped_rows * d).enumerate().for_each_init(Scratch::default, |scratch, (group, out)| {
        let Scratch { seen, keys_t, scores } = scratch;
        seen.clear();
        seen.extend((0..grouped_rows).map(|row| visible(group, row)));
        let widest = seen.iter().copied().max().unwrap_or(0);
        let stride = widest.next_multiple_of(KEY_BLOCK);
        let (ks, vs) = (&k[group * keys * d..][..widest * d], &v[group * keys * d..][..widest * d]);
        transpose_keys(ks, d, stride, keys_t);
        let qs = &q[group * grouped_rows * d..][..grouped_rows * d];
        for first in (0..grouped_rows).step_by(ROW_BLOCK) {
            let n = ROW_BLOCK.min(grouped_rows - first);
            let seen = &seen[first..first + n];
            let (fewest, most) = (*seen.iter().min().unwrap(), *seen.iter().max().unwrap());
            scores.clear();
            scores.resize(n * stride, 0.0);
            block_scores(&qs[first * d..][..n * d], keys_t, stride, most.next_multiple_of(KEY_BLOCK), scores);
            for (row, &seen) in seen.iter().enumerate() {
                let probs = &mut scores[row * stride..][..seen];
                softmax_row(probs, seen, scale);
                if round_bf16 {
                    probs.iter_mut().for_each(|p| *p = half::bf16::from_f32(*p).to_f32());
                }
            }
            let out = &mut out[first * d..][..n * d];
            block_weighted_sum(scores, stride, vs, 0..fewest, out);
            for (row, &seen) in seen.iter().enumerate().filter(|(_, &seen)| seen > fewest) {
                block_weighted_sum(
                    &scores[row * stride..][..stride],
                    stride,
                    vs,
                    fewest..seen,
                    &mut out[row * d..][..d],
                );
            }
        }
    });
    out
}

/// A task's buffers, kept from one KV head to the next.
#[derive(Default)]
struct Scratch {
    /// Keys seen by each query row of the KV head.
    seen: Vec<usize>,
    /// The KV head's keys transposed: `[d, stride]`.
    keys_t: Vec<f32>,
    /// One block of score rows: `[ROW_BLOCK, stride]`.
    scores: Vec<f32>,
}

/// `keys` `[n, d]` into `keys_t` `[d, stride]`, columns past `n` zero.
fn transpose_keys(keys: &[f32], d: usize, stride: usize, keys_t: &mut Vec<f32>) {
    keys_t.clear();
    keys_t.resize(d * stride, 0.0);
    for (j, key) in keys.chunks_exact(d).enumerate() {
        for (i, &x) in key.iter().enumerate() {
            keys_t[i * stride + j] = x;
        }
    }
}

// `scores[r][j] = q[r] · keys[j]` for the block's rows and keys `0..width`.
dispatch_simd!(block_scores: fn(q: &[f32], keys_t: &[f32], stride: usize, width: usize, scores: &mut [f32]) => block_scores_body);

#[inline(always)]
fn block_scores_body(q: &[f32], keys_t: &[f32], stride: usize, width: usize, scores: &mut [f32]) {
    match scores.len() / stride {
        4 => scores_of::<4>(q, keys_t, stride, width, scores),
        3 => scores_of::<3>(q, keys_t, stride, width, scores),
        2 => scores_of::<2>(q, keys_t, stride, width, scores),
        1 => scores_of::<1>(q, keys_t, stride, width, scores),
        n => unreachable!("a block of {n} query rows"),
    }
}

/// `R` rows of `q` `[R, d]` against `keys_t` `[d, stride]` for keys `0..width` (a multiple of
/// [`KEY_BLOCK`]): each score one chain of multiply-adds over `d` in order.
#[inline(always)]
fn scores_of<const R: usize>(q: &[f32], keys_t: &[f32], stride: usize, width: usize, scores: &mut [f32]) {
    let d = q.len() / R;
    assert!(width <= stride && keys_t.len() == d * stride && scores.len() == R * stride);
    let q: [&[f32]; R] = std::array::from_fn(|r| &q[r * d..][..d]);
    for first in (0..width).step_by(KEY_BLOCK) {
        let mut acc = [[0f32; KEY_BLOCK]; R];
        for (i, column) in keys_t.chunks_exact(stride).enumerate() {
            let column: &[f32; KEY_BLOCK] = column[first..first + KEY_BLOCK].try_into().unwrap();
            for r in 0..R {
                let x = q[r][i];
                for l in 0..KEY_BLOCK {
                    acc[r][l] = x.mul_add(column[l], acc[r][l]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            scores[r * stride + first..][..KEY_BLOCK].copy_from_slice(acc);
        }
    }
}

// `out[r] += Σ_{j ∈ keys} probs[r][j] · values[j]`, keys in order.
dispatch_simd!(block_weighted_sum: fn(probs: &[f32], stride: usize, values: &[f32], keys: Range<usize>, out: &mut [f32]) => block_weighted_sum_body);

#[inline(always)]
fn block_weighted_sum_body(probs: &[f32], stride: usize, values: &[f32], keys: Range<usize>, out: &mut [f32]) {
    match probs.len() / stride {
        4 => weighted_sum_of::<4>(probs, stride, values, keys, out),
        3 => weighted_sum_of::<3>(probs, stride, values, keys, out),
        2 => weighted_sum_of::<2>(probs, stride, values, keys, out),
        1 => weighted_sum_of::<1>(probs, stride, values, keys, out),
        n => unreachable!("a block of {n} query rows"),
    }
}

/// `R` rows: each output value continues its chain of multiply-adds over `keys` in order, so
/// summing keys `a..b` then `b..c` gives the bits of summing `a..c` at once.
#[inline(always)]
fn weighted_sum_of<const R: usize>(probs: &[f32], stride: usize, values: &[f32], keys: Range<usize>, out: &mut [f32]) {
    let d = out.len() / R;
    assert!(probs.len() == R * stride && keys.end <= stride && values.len() >= keys.end * d);
    let probs: [&[f32]; R] = std::array::from_fn(|r| &probs[r * stride..][..keys.end]);
    let columns = d - d % COLUMN_BLOCK;
    for first in (0..columns).step_by(COLUMN_BLOCK) {
        let mut acc: [[f32; COLUMN_BLOCK]; R] =
            std::array::from_fn(|r| out[r * d + first..][..COLUMN_BLOCK].try_into().unwrap());
        for j in keys.clone() {
            let value: &[f32; COLUMN_BLOCK] = values[j * d + first..][..COLUMN_BLOCK].try_into().unwrap();
            for r in 0..R {
                let p = probs[r][j];
                for l in 0..COLUMN_BLOCK {
                    acc[r][l] = p.mul_add(value[l], acc[r][l]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            out[r * d + first..][..COLUMN_BLOCK].copy_from_slice(acc);
        }
    }
    // Columns past the last full block (head sizes that are not a multiple of 16): the same chains.
    for c in columns..d {
        for r in 0..R {
            let mut acc = out[r * d + c];
            for j in keys.clone() {
                acc = probs[r][j].mul_add(values[j * d + c], acc);
            }
            out[r * d + c] = acc;
        }
    }
}

// `scores[j] = q · keys[j]` (the reward head's one dot per row).
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

    /// Against a plain f64 softmax attention: two batch rows of two KV heads with two query heads
    /// each, 7 positions per head (blocks of rows that cross a head, tails of different lengths),
    /// a head size with a partial column block; causal and pooled limits.
    #[test]
    fn matches_an_f64_reference() {
        let (batch, kv_heads, rows, keys, d) = (2, 2, 7, 12, 40);
        let grouped_rows = 2 * rows;
        let shape = Shape { batch, kv_heads, grouped_rows, rows, keys, d };
        let (q, k, v) = (
            values(batch * kv_heads * grouped_rows * d, 1),
            values(batch * kv_heads * keys * d, 2),
            values(batch * kv_heads * keys * d, 3),
        );
        let pooled = [11u32, 4];
        let cases = [(KeyLimits::Causal { first_row: 3 }, "causal"), (KeyLimits::PerBatchRow(&pooled), "pooled")];
        for (limits, name) in cases {
            let out = attention((&q, &k, &v), shape, 0.2, limits, false);
            for group in 0..batch * kv_heads {
                for row in 0..grouped_rows {
                    let visible = match limits {
                        KeyLimits::Causal { first_row } => first_row + row % rows + 1,
                        KeyLimits::PerBatchRow(limits) => limits[group / kv_heads] as usize + 1,
                    };
                    let q = &q[(group * grouped_rows + row) * d..][..d];
                    let key = |j: usize| &k[(group * keys + j) * d..][..d];
                    let s: Vec<f64> = (0..visible)
                        .map(|j| 0.2 * q.iter().zip(key(j)).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>())
                        .collect();
                    let max = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for i in 0..d {
                        let want: f64 = (0..visible).map(|j| e[j] / sum * v[(group * keys + j) * d + i] as f64).sum();
                        let got = out[(group * grouped_rows + row) * d + i] as f64;
                        assert!((got - want).abs() < 1e-5, "{name}: group {group} row {row} col {i}: {got} vs {want}");
                    }
                }
            }
        }
    }
}
