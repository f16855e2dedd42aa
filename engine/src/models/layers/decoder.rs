//! The decoder stack of a reward model, run for scoring: every layer on all positions but the
//! last, which only runs at each row's pooled token.

use candle_core::{Result, Tensor};

use super::{LivePositions, QueryRows, RotaryEmbedding};

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
    let all = QueryRows::all(&cos, &sin).with_live(live.clone());
    let mut xs = xs;
    for i in 0..layers - 1 {
        xs = layer(i, &xs, &cos, &sin, &all)?;
    }
    let at_pooled = QueryRows::pooled(pooled, t, &cos, &sin)?.with_live(live);
    layer(layers - 1, &xs, &cos, &sin, &at_pooled)
}
