//! The query rows a layer computes (every position, or each row's pooled token), the masks and
//! key limits that say which keys each sees, and the live positions whose position-wise steps
//! can reach a score.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

/// Which positions of a batch a layer computes queries (and everything after attention) for.
/// Keys and values always cover every position. The last layer only matters at the pooled
/// token of each row, so it runs its query projection, attention, output projection and MLP on
/// one position per row instead of all of them (the same numbers, a layer's work saved).
pub struct QueryRows {
    /// Rotary tables for the query positions: `[t, d/2]` (all) or `[b, 1, d/2]` (pooled).
    pub cos: Tensor,
    pub sin: Tensor,
    /// Pooled rows: the additive mask `[b, 1, 1, t]` hiding keys after each row's pooled token.
    /// Causal queries (all positions) hold none: candle's attention builds the causal mask of
    /// each block of query rows it computes ([`QueryRows::mask_block`]), and the CPU's
    /// attention needs none, so no `t × t` mask ever exists.
    pooled_mask: Option<Tensor>,
    /// `row × t + position` of each pooled token; `None` for all positions.
    select: Option<Tensor>,
    /// The visible keys as limits, for the CPU's attention: query row `r` of batch row `i` sees
    /// keys `0..=r` (all positions, causal) or `0..=pooled[i]` (pooled).
    pub(super) pooled: Option<Vec<u32>>,
    /// The positions that can reach a score, when running the position-wise steps on those
    /// alone pays (see [`LivePositions`]).
    live: Option<Arc<LivePositions>>,
}

impl QueryRows {
    /// Every position, causal.
    pub fn all(cos: &Tensor, sin: &Tensor) -> Self {
        Self { cos: cos.clone(), sin: sin.clone(), pooled_mask: None, select: None, pooled: None, live: None }
    }

    /// The additive mask of query rows `first_row..first_row + rows` against keys `0..keys`, in
    /// `dtype`: `[1, 1, rows, keys]` causal, or the pooled rows' `[b, 1, 1, keys]`. Its size is
    /// that of the block's scores, which the blocked attention bounds.
    pub(super) fn mask_block(
        &self,
        first_row: usize,
        rows: usize,
        keys: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        match &self.pooled_mask {
            Some(mask) => mask.narrow(3, 0, keys)?.to_dtype(dtype),
            None => causal_block(first_row, rows, keys, device, dtype),
        }
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
        Ok(Self {
            cos: rope_rows(cos)?,
            sin: rope_rows(sin)?,
            pooled_mask: Some(mask),
            select: Some(select),
            pooled,
            live: None,
        })
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

/// Additive causal mask of query rows `first_row..first_row + rows` against keys `0..keys`,
/// `[1, 1, rows, keys]`: 0 where the key is at or before the query, -inf after. With right
/// padding this is the whole mask: real tokens never see the pads behind them, and what pad
/// positions compute is never pooled. Built on the device (no upload per batch).
pub fn causal_block(first_row: usize, rows: usize, keys: usize, device: &Device, dtype: DType) -> Result<Tensor> {
    let queries = Tensor::arange(first_row as u32, (first_row + rows) as u32, device)?;
    let keys_at = Tensor::arange(0u32, keys as u32, device)?;
    let future = keys_at.unsqueeze(0)?.broadcast_gt(&queries.unsqueeze(1)?)?; // key j > query i
    let neg_inf = Tensor::new(f32::NEG_INFINITY, device)?.to_dtype(dtype)?.broadcast_as((rows, keys))?;
    let zero = Tensor::zeros((rows, keys), dtype, device)?;
    future.where_cond(&neg_inf, &zero)?.reshape((1, 1, rows, keys))
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
        let queries = QueryRows::all(&xs, &xs).with_live(Some(live));
        let pooled_rows = Tensor::zeros((3, 1, 2), DType::F32, &dev).unwrap();
        assert_eq!(queries.packed(&pooled_rows).unwrap().input.dims(), [3, 1, 2], "[b, 1, h] is not packed");
        assert_eq!(queries.packed(&xs).unwrap().input.dims(), [8, 2]);
    }

    #[test]
    fn causal_blocks_hide_the_future_only() {
        let inf = f32::NEG_INFINITY;
        let rows = |first, n, keys| -> Vec<Vec<f32>> {
            let mask = causal_block(first, n, keys, &Device::Cpu, DType::F32).unwrap();
            mask.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
        };
        assert_eq!(rows(0, 3, 3), vec![vec![0.0, inf, inf], vec![0.0, 0.0, inf], vec![0.0, 0.0, 0.0]]);
        // Rows 1 and 2 of a longer batch, against the keys they can see.
        assert_eq!(rows(1, 2, 3), vec![vec![0.0, 0.0, inf], vec![0.0, 0.0, 0.0]]);
    }
}
