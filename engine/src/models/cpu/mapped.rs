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

/// Runs `$body` with `$value` the reader of `$view`'s values: `Fn(&[u8; W]) -> f32` for its
/// dtype (`W` bytes, little-endian), rounding to the nearest bf16 when `$round` is true (bf16 and
/// f16 widen to f32 exactly). One copy of `$body` per dtype: no dispatch per value.
macro_rules! with_reader {
    ($view:expr, $round:expr, |$value:ident| $body:expr) => {{
        let round_bf16: bool = $round;
        let round = move |v: f32| if round_bf16 { bf16::from_f32(v).to_f32() } else { v };
        match $view.dtype() {
            safetensors::Dtype::F32 => {
                let $value = move |b: &[u8; 4]| round(f32::from_le_bytes(*b));
                $body
            }
            safetensors::Dtype::F16 => {
                let $value = move |b: &[u8; 2]| round(f16::from_le_bytes(*b).to_f32());
                $body
            }
            _ => {
                let $value = move |b: &[u8; 2]| round(bf16::from_le_bytes(*b).to_f32());
                $body
            }
        }
    }};
}

/// Row `row` of a `[rows, out.len()]` view, in f32 (`round_bf16`: rounded to bf16 on the way).
pub fn read_row(view: &TensorView<'_>, row: usize, out: &mut [f32], round_bf16: bool) {
    let width = view.dtype().bitsize() / 8;
    let bytes = &view.data()[row * out.len() * width..][..out.len() * width];
    with_reader!(view, round_bf16, |value| {
        for (o, b) in out.iter_mut().zip(bytes.as_chunks().0) {
            *o = value(b);
        }
    })
}

/// A `[rows, cols]` view transposed into a row-major `[cols, rows]` f32 matrix, each value
/// rounded to the nearest bf16 on the way with `round_bf16`.
pub fn transposed(view: &TensorView<'_>, round_bf16: bool) -> Vec<f32> {
    let (rows, cols) = (view.shape()[0], view.shape()[1]);
    with_reader!(view, round_bf16, |value| transpose_with(view.data().as_chunks().0, (rows, cols), value))
}

/// A row-major `[rows, cols]` matrix of `T` transposed into a row-major `[cols, rows]` f32 one,
/// each value through `value`, in 32 × 32 tiles: a tile of source rows is converted into a small
/// buffer (reads in order), then written out a result row at a time (writes in order). A plain
/// strided copy of a large weight touches memory in the worst order: seconds at load for a 0.6B
/// model.
#[inline(always)]
pub(super) fn transpose_with<T: Sync, F: Fn(&T) -> f32 + Sync>(
    src: &[T],
    (rows, cols): (usize, usize),
    value: F,
) -> Vec<f32> {
    const TILE: usize = 32;
    assert_eq!(src.len(), rows * cols, "a [{rows}, {cols}] matrix");
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
                let row = &src[(r0 + r) * cols + c0..][..width];
                for (v, x) in converted.iter_mut().zip(row) {
                    *v = value(x);
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
