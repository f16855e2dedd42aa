//! The bf16 kernel alone on the linear layers of the Qwen3-0.6B shape: GFLOP/s of
//! `Bf16Linear`/`GatedBf16` against candle's f32 matmul (the `gemm` crate) on the same shapes,
//! and the instruction's peak on this machine (a loop of independent `vdpbf16ps`).
//!
//!     cargo bench -p skyscore-engine --bench bf16_kernel            # M=2048 rows (a batch of 16 × 128 tokens)
//!     BENCH_M=6000 cargo bench -p skyscore-engine --bench bf16_kernel
//!
//! Uses all of rayon's threads (RAYON_NUM_THREADS to change). Needs an x86-64 CPU with
//! AVX512-BF16; elsewhere it says so and exits.

#[cfg(target_arch = "x86_64")]
fn main() {
    use candle_core::{Device, Tensor};
    use half::bf16;
    use skyscore_engine::models::cpu::bf16_linear::{supported, Bf16Linear, GatedBf16};
    use std::time::Instant;

    if !supported() {
        println!("this CPU has no AVX512-BF16: nothing to measure");
        return;
    }
    let m: usize = std::env::var("BENCH_M").ok().and_then(|v| v.parse().ok()).unwrap_or(2048);
    let threads = rayon::current_num_threads();
    let values = |len: usize, seed: usize| -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 2003.0) - 0.5).collect()
    };
    // Best of `reps` runs after one warm-up, in GFLOP/s.
    let gflops = |flops: f64, reps: usize, f: &mut dyn FnMut()| -> f64 {
        f();
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        flops / best / 1e9
    };
    println!("M={m}, {threads} threads");
    println!("{:<28} {:>12} {:>12} {:>8}", "shape (k → n)", "bf16 GFLOP/s", "f32 GFLOP/s", "ratio");
    let x_all = values(m * 3072, 1);
    for (name, k, n, gated) in [
        ("q_proj 1024 → 2048", 1024, 2048, false),
        ("k/v_proj 1024 → 1024", 1024, 1024, false),
        ("o_proj 2048 → 1024", 2048, 1024, false),
        ("gate+up 1024 → 2×3072", 1024, 3072, true),
        ("down_proj 3072 → 1024", 3072, 1024, false),
    ] {
        let x = &x_all[..m * k];
        let w = values(n * k, 2);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let products = if gated { 2.0 } else { 1.0 };
        let flops = 2.0 * (m * k * n) as f64 * products;
        let ours = if gated {
            let fused = GatedBf16::pack(&wb, &wb, n, k);
            gflops(flops, 5, &mut || drop(std::hint::black_box(fused.matmul(x, m))))
        } else {
            let linear = Bf16Linear::pack(&wb, n, k, None);
            gflops(flops, 5, &mut || drop(std::hint::black_box(linear.matmul(x, m))))
        };
        let xt = Tensor::from_slice(x, (m, k), &Device::Cpu).unwrap();
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let f32_rate = gflops(flops, 3, &mut || {
            for _ in 0..products as usize {
                drop(std::hint::black_box(xt.matmul(&wt.t().unwrap()).unwrap()));
            }
        });
        println!("{name:<28} {ours:>12.0} {f32_rate:>12.0} {:>7.2}×", ours / f32_rate);
    }
    let peak = peak_gflops_per_thread();
    println!("vdpbf16ps peak: {peak:.0} GFLOP/s per thread, {:.0} on {threads} threads", peak * threads as f64);
}

/// A loop of 24 independent `vdpbf16ps` chains on one thread: what the instruction allows.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
fn peak_gflops_per_thread() -> f64 {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn chains(steps: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 24];
        let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3c00_3c00));
        for _ in 0..steps {
            for i in 0..24 {
                acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for v in acc {
            sum = _mm512_add_ps(sum, v);
        }
        _mm512_reduce_add_ps(sum)
    }
    let steps = 20_000_000;
    let t = std::time::Instant::now();
    // SAFETY: the caller checked AVX512-BF16.
    std::hint::black_box(unsafe { chains(steps) });
    (steps * 24 * 64) as f64 / t.elapsed().as_secs_f64() / 1e9
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("the bf16 kernel is x86-64 only: nothing to measure");
}
