//! Pooling as transformers does it, and the classification head on the pooled rows.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::Linear;

use super::super::cpu;
use super::RmsNorm;

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

    #[test]
    fn pooling_is_the_rightmost_non_pad_token() {
        assert_eq!(pooled_index(&[5, 6, 7], Some(9)), 2);
        assert_eq!(pooled_index(&[5, 9, 7, 9], Some(9)), 2);
        assert_eq!(pooled_index(&[9, 9], Some(9)), 0);
        assert_eq!(pooled_index(&[5, 6], None), 1);
    }
}
