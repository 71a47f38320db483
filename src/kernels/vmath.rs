//! Vectorised `exp` for the softmax and SiLU (libm's scalar `expf` dominated both), and `erf`
//! for the GELU of the feed-forward gates (libm's scalar `erff` was 3% of a bf16 UNet step).
//!
//! exp(x) = 2^n * e^r with n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2], e^r by a
//! degree-6 polynomial (Taylor coefficients; relative error ~2e-7 over the range, comparable to
//! f32 rounding), 2^n applied with `vscalefps` (which also handles overflow to inf and underflow
//! to 0).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
/// # Safety
/// AVX-512 F present.
pub unsafe fn exp16(x: __m512) -> __m512 {
    let x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7)), _mm512_set1_ps(-103.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    // Cody-Waite: ln 2 split in a part exact in f32 and the rest.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 120.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 24.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 6.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
    _mm512_scalef_ps(p, n)
}

/// `row[i] = exp(scale * (row[i] - max))` in place; returns the sum of the results.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn softmax_exp_row(row: &mut [f32], scale: f32) -> f32 {
    let n = row.len();
    let p = row.as_mut_ptr();
    let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 16 <= n {
        mv = _mm512_max_ps(mv, _mm512_loadu_ps(p.add(i)));
        i += 16;
    }
    let mut m = _mm512_reduce_max_ps(mv);
    for j in i..n {
        m = m.max(*p.add(j));
    }
    let sv = _mm512_set1_ps(scale);
    let off = _mm512_set1_ps(-scale * m);
    let mut acc = _mm512_setzero_ps();
    i = 0;
    while i + 16 <= n {
        let e = exp16(_mm512_fmadd_ps(_mm512_loadu_ps(p.add(i)), sv, off));
        _mm512_storeu_ps(p.add(i), e);
        acc = _mm512_add_ps(acc, e);
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = ((1u32 << (n - i)) - 1) as __mmask16;
        let e = exp16(_mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, p.add(i)), sv, off));
        _mm512_mask_storeu_ps(p.add(i), mask, e);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(mask, e));
    }
    _mm512_reduce_add_ps(acc)
}

/// The softmax numerators down the columns of a row-major `rows` x `cols` block (`cols` a
/// multiple of 16): `x = exp(scale * (x - max of its column))` in place; `sums[c]` gets column
/// c's sum. (Attention keeps its scores transposed, keys down the rows, one query per column.)
///
/// # Safety
/// The CPU must support AVX-512F; `block` holds `rows * cols` values, `sums` `cols`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn softmax_exp_columns(block: &mut [f32], rows: usize, cols: usize, scale: f32, sums: &mut [f32]) {
    assert!(cols.is_multiple_of(16) && block.len() >= rows * cols && sums.len() >= cols);
    let p = block.as_mut_ptr();
    let sv = _mm512_set1_ps(scale);
    for c in (0..cols).step_by(16) {
        let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
        for r in 0..rows {
            mv = _mm512_max_ps(mv, _mm512_loadu_ps(p.add(r * cols + c)));
        }
        let off = _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), sv), mv);
        let mut acc = _mm512_setzero_ps();
        for r in 0..rows {
            let e = exp16(_mm512_fmadd_ps(_mm512_loadu_ps(p.add(r * cols + c)), sv, off));
            _mm512_storeu_ps(p.add(r * cols + c), e);
            acc = _mm512_add_ps(acc, e);
        }
        _mm512_storeu_ps(sums.as_mut_ptr().add(c), acc);
    }
}

/// `dst[i] = silu(src[i] * scale + shift)`.
///
/// # Safety
/// The CPU must support AVX-512F; `dst.len() == src.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn affine_silu(dst: &mut [f32], src: &[f32], scale: f32, shift: f32) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let (sv, bv, one) = (_mm512_set1_ps(scale), _mm512_set1_ps(shift), _mm512_set1_ps(1.0));
    let f = |y: __m512| _mm512_div_ps(y, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), y))));
    let mut i = 0;
    while i + 16 <= n {
        let y = _mm512_fmadd_ps(_mm512_loadu_ps(s.add(i)), sv, bv);
        _mm512_storeu_ps(d.add(i), f(y));
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = ((1u32 << (n - i)) - 1) as __mmask16;
        let y = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, s.add(i)), sv, bv);
        _mm512_mask_storeu_ps(d.add(i), mask, f(y));
    }
}

/// erf(x), absolute error below 2e-7 (Abramowitz & Stegun 7.1.26: 1 - t p(t) e^{-x^2} with
/// t = 1 / (1 + 0.3275911 |x|), sign restored).
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn erf16(x: __m512) -> __m512 {
    let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
    let ax = _mm512_castsi512_ps(_mm512_andnot_si512(_mm512_set1_epi32(i32::MIN), _mm512_castps_si512(x)));
    let one = _mm512_set1_ps(1.0);
    let t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.327_591_1), ax, one));
    let mut p = _mm512_set1_ps(1.061_405_4);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453_152));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421_413_7));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284_496_74));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254_829_6));
    p = _mm512_mul_ps(p, t);
    let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(ax, ax)));
    let y = _mm512_fnmadd_ps(p, e, one);
    _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign))
}

/// GEGLU of one row: `out[i] = value[i] * gelu(gate[i])` with the exact (erf) GELU,
/// `gelu(g) = g / 2 * (1 + erf(g / sqrt 2))`.
///
/// # Safety
/// The CPU must support AVX-512F; the three slices have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn geglu_row(value: &[f32], gate: &[f32], out: &mut [f32]) {
    let n = value.len().min(gate.len()).min(out.len());
    let (half, inv_sqrt2) = (_mm512_set1_ps(0.5), _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let f = |v: __m512, g: __m512| {
        let gelu = _mm512_mul_ps(
            _mm512_mul_ps(half, g),
            _mm512_add_ps(_mm512_set1_ps(1.0), erf16(_mm512_mul_ps(g, inv_sqrt2))),
        );
        _mm512_mul_ps(v, gelu)
    };
    let mut i = 0;
    while i + 16 <= n {
        let r = f(_mm512_loadu_ps(value.as_ptr().add(i)), _mm512_loadu_ps(gate.as_ptr().add(i)));
        _mm512_storeu_ps(out.as_mut_ptr().add(i), r);
        i += 16;
    }
    if i < n {
        let m: __mmask16 = ((1u32 << (n - i)) - 1) as __mmask16;
        let r = f(_mm512_maskz_loadu_ps(m, value.as_ptr().add(i)), _mm512_maskz_loadu_ps(m, gate.as_ptr().add(i)));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, r);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    #[test]
    fn exp_is_accurate() {
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        let xs: Vec<f32> = (0..4000).map(|i| -90.0 + i as f32 * 0.0449).collect();
        let mut row = xs.clone();
        let s = unsafe { super::softmax_exp_row(&mut row, 1.0) };
        let m = xs.iter().cloned().fold(f32::MIN, f32::max);
        let mut want_sum = 0f64;
        for (x, got) in xs.iter().zip(&row) {
            let want = ((x - m) as f64).exp();
            want_sum += want;
            assert!((*got as f64 - want).abs() <= 1e-6 * want + 1e-37, "{x}: {got} vs {want}");
        }
        assert!((s as f64 - want_sum).abs() < 1e-5 * want_sum);
        let src: Vec<f32> = (0..37).map(|i| -20.0 + i as f32 * 1.1).collect();
        let mut dst = vec![0f32; 37];
        unsafe { super::affine_silu(&mut dst, &src, 0.5, 0.25) };
        for (x, y) in src.iter().zip(&dst) {
            let v = (x * 0.5 + 0.25) as f64;
            let want = v / (1.0 + (-v).exp());
            assert!((*y as f64 - want).abs() <= 1e-6 * want.abs() + 1e-7, "{x}: {y} vs {want}");
        }
    }

    /// GEGLU against erf computed in f64 (Simpson's rule on exp(-t^2), far more precise than
    /// the 2e-7 it checks).
    #[test]
    fn erf_and_geglu_are_accurate() {
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        let erf = |x: f64| {
            let n = 4000;
            let h = x / n as f64;
            let f = |t: f64| (-t * t).exp();
            let mut s = f(0.0) + f(x);
            for i in 1..n {
                s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
            }
            s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
        };
        let gates: Vec<f32> = (0..301).map(|i| -7.5 + i as f32 * 0.05).collect();
        let values: Vec<f32> = (0..301).map(|i| 1.0 - i as f32 * 0.01).collect();
        let mut out = vec![0f32; 301];
        unsafe { super::geglu_row(&values, &gates, &mut out) };
        for ((g, v), got) in gates.iter().zip(&values).zip(&out) {
            let (g, v) = (*g as f64, *v as f64);
            let want = v * 0.5 * g * (1.0 + erf(g / std::f64::consts::SQRT_2));
            assert!((*got as f64 - want).abs() <= 3e-7 * (1.0 + g.abs()) * v.abs().max(1e-3), "{g}: {got} vs {want}");
        }
    }
}
