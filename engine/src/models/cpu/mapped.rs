//! Weights read straight from the checkpoint's memory-mapped safetensors files, in whatever
//! dtype the file holds (f32, bf16 or f16), into the layout a CPU kernel wants. No copy of a
//! whole matrix is made on the way: on a VM, faulting in and zeroing fresh pages for a copy costs
//! more than the conversion itself (a 0.6B model in f32: 2.4 GB of pages per copy).

use candle_core::safetensors::MmapedSafetensors;
use candle_core::Result;
use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::tensor::TensorView;

/// The `[rows, cols]` tensor `name` of the memory-mapped checkpoint, checked: shape, and a dtype
/// this module reads.
pub fn matrix_view<'a>(
    checkpoint: &'a MmapedSafetensors,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<TensorView<'a>> {
    let view = checkpoint.get(name)?;
    if view.shape() != [rows, cols] {
        candle_core::bail!("{name}: shape {:?}, expected [{rows}, {cols}]", view.shape());
    }
    match view.dtype() {
        safetensors::Dtype::F32 | safetensors::Dtype::BF16 | safetensors::Dtype::F16 => Ok(view),
        other => candle_core::bail!("{name}: weights of dtype {other:?} are not supported"),
    }
}

/// How the values of a view become f32: as they are (exact: bf16 and f16 widen without loss), or
/// rounded to the nearest bf16 first (`--dtype bf16` computed in f32).
#[derive(Debug, Clone, Copy)]
struct Reader {
    dtype: safetensors::Dtype,
    round_bf16: bool,
}

impl Reader {
    fn new(view: &TensorView<'_>, round_bf16: bool) -> Self {
        Self { dtype: view.dtype(), round_bf16 }
    }

    fn width(self) -> usize {
        self.dtype.bitsize() / 8
    }

    /// The value whose little-endian bytes start `bytes`.
    #[inline(always)]
    fn value(self, bytes: &[u8]) -> f32 {
        let value = match self.dtype {
            safetensors::Dtype::F32 => f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            safetensors::Dtype::F16 => f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
            _ => bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
        };
        if self.round_bf16 {
            bf16::from_f32(value).to_f32()
        } else {
            value
        }
    }
}

/// Row `row` of a `[rows, out.len()]` view, in f32 (`round_bf16`: rounded to bf16 on the way).
pub fn read_row(view: &TensorView<'_>, row: usize, out: &mut [f32], round_bf16: bool) {
    let reader = Reader::new(view, round_bf16);
    let width = reader.width();
    let bytes = &view.data()[row * out.len() * width..][..out.len() * width];
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(width)) {
        *o = reader.value(b);
    }
}

/// A `[rows, cols]` view transposed into a row-major `[cols, rows]` f32 matrix, each value
/// rounded to the nearest bf16 on the way with `round_bf16`.
pub fn transposed(view: &TensorView<'_>, round_bf16: bool) -> Vec<f32> {
    let (rows, cols) = (view.shape()[0], view.shape()[1]);
    let src = view.data();
    let round = |v: f32| if round_bf16 { bf16::from_f32(v).to_f32() } else { v };
    // One copy of the loop per dtype: no per-value dispatch.
    match view.dtype() {
        safetensors::Dtype::F32 => transpose_with::<4>(src, (rows, cols), |b| round(f32::from_le_bytes(*b))),
        safetensors::Dtype::F16 => transpose_with::<2>(src, (rows, cols), |b| round(f16::from_le_bytes(*b).to_f32())),
        _ => transpose_with::<2>(src, (rows, cols), |b| round(bf16::from_le_bytes(*b).to_f32())),
    }
}

/// The transposition of [`transposed`] for values of `W` bytes, in 32 × 32 tiles: a tile of
/// source rows is converted into a small buffer (reads in order), then written out a result row
/// at a time (writes in order). A plain strided copy of a large weight touches memory in the
/// worst order: seconds at load for a 0.6B model.
#[inline(always)]
fn transpose_with<const W: usize>(
    src: &[u8],
    (rows, cols): (usize, usize),
    value: impl Fn(&[u8; W]) -> f32 + Sync,
) -> Vec<f32> {
    const TILE: usize = 32;
    assert_eq!(src.len(), rows * cols * W, "a [{rows}, {cols}] tensor of {W}-byte values");
    let mut out = vec![0f32; rows * cols];
    if out.is_empty() {
        return out;
    }
    // Each task writes TILE rows of the result (TILE columns of the source).
    out.par_chunks_mut(TILE * rows).enumerate().for_each(|(block, dst)| {
        let c0 = block * TILE;
        let width = dst.len() / rows;
        let mut tile = [[0f32; TILE]; TILE];
        for r0 in (0..rows).step_by(TILE) {
            let height = TILE.min(rows - r0);
            for (r, converted) in tile.iter_mut().enumerate().take(height) {
                let row = &src[((r0 + r) * cols + c0) * W..][..width * W];
                for (v, bytes) in converted.iter_mut().zip(row.chunks_exact(W)) {
                    *v = value(bytes.try_into().unwrap());
                }
            }
            for (c, out_row) in dst.chunks_exact_mut(rows).enumerate() {
                for (r, o) in out_row[r0..r0 + height].iter_mut().enumerate() {
                    *o = tile[r][c];
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint file holding `values` as a `[rows, cols]` tensor in each dtype.
    fn checkpoint(dir: &std::path::Path, values: &[f32], rows: usize, cols: usize) -> MmapedSafetensors {
        let device = candle_core::Device::Cpu;
        let t = candle_core::Tensor::from_vec(values.to_vec(), (rows, cols), &device).unwrap();
        let tensors = std::collections::HashMap::from([
            ("f32".to_string(), t.clone()),
            ("bf16".to_string(), t.to_dtype(candle_core::DType::BF16).unwrap()),
            ("f16".to_string(), t.to_dtype(candle_core::DType::F16).unwrap()),
        ]);
        let path = dir.join("w.safetensors");
        candle_core::safetensors::save(&tensors, &path).unwrap();
        // SAFETY: a file this test wrote and nothing changes.
        unsafe { MmapedSafetensors::new(&path) }.unwrap()
    }

    /// Transposed and row reads give candle's own conversions, for every dtype, with and
    /// without rounding; shapes that are not multiples of the tile.
    #[test]
    fn reads_match_candle_in_every_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (37, 70);
        let values: Vec<f32> = super::super::test_values(rows * cols, 5).iter().map(|v| v * 3.3).collect();
        let checkpoint = checkpoint(dir.path(), &values, rows, cols);
        let device = candle_core::Device::Cpu;
        for name in ["f32", "bf16", "f16"] {
            let view = matrix_view(&checkpoint, name, rows, cols).unwrap();
            let widened = checkpoint.load(name, &device).unwrap().to_dtype(candle_core::DType::F32).unwrap();
            for round_bf16 in [false, true] {
                let want = if round_bf16 {
                    widened.to_dtype(candle_core::DType::BF16).unwrap().to_dtype(candle_core::DType::F32).unwrap()
                } else {
                    widened.clone()
                };
                let want_t: Vec<f32> = want.t().unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let got_t = transposed(&view, round_bf16);
                assert!(got_t.iter().zip(&want_t).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} {round_bf16}");
                let want_row: Vec<f32> = want.get(11).unwrap().to_vec1().unwrap();
                let mut row = vec![0f32; cols];
                read_row(&view, 11, &mut row, round_bf16);
                assert!(row.iter().zip(&want_row).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} {round_bf16} row");
            }
        }
        let wrong = matrix_view(&checkpoint, "f32", cols, rows).unwrap_err().to_string();
        assert!(wrong.contains("f32: shape [37, 70], expected [70, 37]"), "{wrong}");
    }
}
