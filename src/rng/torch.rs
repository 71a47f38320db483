//! `torch.randn` on the CPU, bit for bit (PyTorch 2.15; the recipe is
//! `../shared/reference/TORCH_RNG.md`). A contiguous float32 tensor of 16 values or more goes
//! through the vectorised Box-Muller kernel ("fill16"), whose arithmetic is copied operation by
//! operation (Cephes log and sincos as in `avx_mathfun.h`, with the fused multiply-adds exactly
//! where the compiler put them in libtorch), so it is exact on any CPU. Anything smaller (or a
//! non-contiguous output) takes the serial double-precision path with its cached second value.

use super::mt19937::Mt19937;

/// A `torch.Generator("cpu")` after `manual_seed(seed)`; every draw continues its stream.
#[derive(Clone)]
pub struct TorchGenerator {
    engine: Mt19937,
    /// The sine half of the serial path's last Box-Muller pair, served by the next serial draw.
    cached_normal: Option<f64>,
}

impl TorchGenerator {
    /// `torch.Generator().manual_seed(seed)` (the same stream as `torch.manual_seed(seed)`).
    pub fn new(seed: u64) -> Self {
        Self { engine: Mt19937::new(seed), cached_normal: None }
    }

    /// One raw 32-bit draw.
    pub fn random(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// Two raw draws, the first as the high half.
    pub fn random64(&mut self) -> u64 {
        let hi = self.random() as u64;
        (hi << 32) | self.random() as u64
    }

    /// A float32 uniform in [0, 1): the low 24 bits of one draw.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.random() & 0xFF_FFFF) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// A double uniform in [0, 1): the low 53 bits of `random64`.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `torch.randn(shape)` of a contiguous float32 tensor with `n` elements, in memory order.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        self.normal(n, 0.0, 1.0)
    }

    /// `tensor.normal_(mean, std)` on a contiguous float32 tensor of `n` elements.
    pub fn normal(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        if n < 16 {
            self.normal_serial(n, mean as f64, std as f64)
        } else {
            self.normal_fill16(n, mean, std)
        }
    }

    /// The element-by-element path: what torch runs for fewer than 16 values or a
    /// non-contiguous output (e.g. `randn_like` of a channels-last tensor), in memory order.
    pub fn normal_serial(&mut self, n: usize, mean: f64, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let z = match self.cached_normal.take() {
                    Some(z) => z,
                    None => {
                        // The first uniform is the angle, the second the radius.
                        let angle = self.uniform_f64();
                        let radius = self.uniform_f64();
                        let r = (-2.0 * (-radius).ln_1p()).sqrt();
                        let theta = 2.0 * std::f64::consts::PI * angle;
                        self.cached_normal = Some(r * theta.sin());
                        r * theta.cos()
                    }
                };
                z.mul_add(std, mean) as f32
            })
            .collect()
    }

    /// The vectorised path for n >= 16: n uniforms, each block of 16 turned into normals in
    /// place; a ragged end gets 16 fresh uniforms over the last 16 positions.
    fn normal_fill16(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        debug_assert!(n >= 16);
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            fill16(block.try_into().expect("16 values"), mean, std);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            fill16(tail.try_into().expect("16 values"), mean, std);
        }
        data
    }
}

/// Box-Muller on one block of uniforms: u1 = 1 - d[j] gives the radius and u2 = d[j+8] the
/// angle; d[j] becomes r cos, d[j+8] r sin.
fn fill16(d: &mut [f32; 16], mean: f32, std: f32) {
    for j in 0..8 {
        let u1 = 1.0 - d[j];
        let u2 = d[j + 8];
        let radius = (log_cephes(u1) * -2.0).sqrt();
        let theta = TWO_PI * u2;
        let (sin, cos) = sincos_cephes(theta);
        d[j] = (radius * cos).mul_add(std, mean);
        d[j + 8] = (radius * sin).mul_add(std, mean);
    }
}

// avx_mathfun.h's constants as libtorch stores them (bit patterns read from the binary).
const TWO_PI: f32 = f32::from_bits(0x40C9_0FDB);
const SQRTHF: f32 = f32::from_bits(0x3F35_04F3);
const LOG_P: [f32; 9] = [
    f32::from_bits(0x3D90_21BB),
    f32::from_bits(0xBDEB_D1B8),
    f32::from_bits(0x3DEF_251A),
    f32::from_bits(0xBDFE_5D4F),
    f32::from_bits(0x3E11_E9BF),
    f32::from_bits(0xBE2A_AE50),
    f32::from_bits(0x3E4C_CEAC),
    f32::from_bits(0xBE7F_FFFC),
    f32::from_bits(0x3EAA_AAAA),
];
const LOG_Q1: f32 = f32::from_bits(0xB95E_8083);
const LOG_Q2: f32 = f32::from_bits(0x3F31_8000);
const FOPI: f32 = f32::from_bits(0x3FA2_F983);
const MINUS_DP: [f32; 3] = [f32::from_bits(0xBF49_0000), f32::from_bits(0xB97D_A000), f32::from_bits(0xB322_2169)];
const COS_P: [f32; 3] = [f32::from_bits(0x37CC_F5CE), f32::from_bits(0xBAB6_061A), f32::from_bits(0x3D2A_AAA5)];
const SIN_P: [f32; 3] = [f32::from_bits(0xB94C_A1F9), f32::from_bits(0x3C08_839E), f32::from_bits(0xBE2A_AAA3)];

/// Cephes `log` as `log256_ps`, for u in (0, 1]. Every `mul_add` is one of libtorch's FMAs;
/// every other operation rounds on its own, as there.
fn log_cephes(u: f32) -> f32 {
    let bits = u.max(f32::MIN_POSITIVE).to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32 + 1.0;
    let m = f32::from_bits((bits & 0x807F_FFFF) | 0x3F00_0000);
    let below = m < SQRTHF;
    let mut x = m + -1.0;
    if below {
        e -= 1.0;
        x += m;
    } else {
        x += 0.0;
    }
    let z = x * x;
    let mut y = LOG_P[0];
    for p in &LOG_P[1..] {
        y = y.mul_add(x, *p);
    }
    y *= x;
    y = y.mul_add(z, e * LOG_Q1);
    y = (-z).mul_add(0.5, y);
    x += y;
    e.mul_add(LOG_Q2, x)
}

/// Cephes `sincos` as `sincos256_ps` (returns (sin, cos)), with libtorch's FMAs, including the
/// blends done by adding zero (which turn -0 into +0).
fn sincos_cephes(theta: f32) -> (f32, f32) {
    let sign_in = theta.to_bits() & 0x8000_0000;
    let ax = theta.abs();
    let j = ((ax * FOPI) as i32 + 1) & !1;
    let y = j as f32;
    let swap_sin = ((j & 4) as u32) << 29;
    let polynomial_is_sine = j & 2 == 0;
    let mut x = y.mul_add(MINUS_DP[0], ax);
    x = y.mul_add(MINUS_DP[1], x);
    x = y.mul_add(MINUS_DP[2], x);
    let sign_cos = ((!(j - 2) & 4) as u32) << 29;
    let sign_sin = sign_in ^ swap_sin;
    let z = x * x;
    let half_z = z * 0.5;
    let mut c = COS_P[0].mul_add(z, COS_P[1]);
    c = c.mul_add(z, COS_P[2]);
    c *= z;
    c = z.mul_add(c, -half_z);
    c += 1.0;
    let mut s = SIN_P[0].mul_add(z, SIN_P[1]);
    s = s.mul_add(z, SIN_P[2]);
    s *= z;
    s = x.mul_add(s, x);
    let (ysin2, ysin1) = if polynomial_is_sine { (s, 0.0) } else { (0.0, c) };
    let sin = ysin2 + ysin1;
    let cos = (s - ysin2) + (c - ysin1);
    (f32::from_bits(sin.to_bits() ^ sign_sin), f32::from_bits(cos.to_bits() ^ sign_cos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    // Reference values of TORCH_RNG.md section 10 (seed 42, fresh generator).
    #[test]
    fn seed_42_uniforms() {
        let mut g = TorchGenerator::new(42);
        let u: Vec<f32> = (0..4).map(|_| g.uniform_f32()).collect();
        assert_eq!(bits(&u), [0x3f61dc66, 0x3f6a3db3, 0x3ec406b8, 0x3f75950e]);
    }

    #[test]
    fn seed_42_fill16_and_its_tail() {
        let v = TorchGenerator::new(42).randn(16);
        assert_eq!(bits(&v[..4]), [0x3ff6a529, 0x3fbe5f53, 0x3f669567, 0xc006c0db]);
        let v = TorchGenerator::new(42).randn(17);
        assert_eq!(bits(&[v[0], v[1], v[15], v[16]]), [0x3ff6a529, 0xbe236d85, 0x3f5c1fb0, 0xbe9e9482]);
    }

    #[test]
    fn seed_42_serial_path_and_its_cache() {
        let mut g = TorchGenerator::new(42);
        let v = g.randn(7);
        assert_eq!(bits(&v[..4]), [0x3eac62ae, 0x3e03e69d, 0x3e7016e7, 0x3e6bdc6c]);
        // fill16 leaves the cache alone; the next serial draw serves it.
        g.randn(16);
        assert_eq!(bits(&g.randn(1)), [0xbf2353c6]);
    }

    #[test]
    fn multiples_of_16_continue_the_stream() {
        let mut g = TorchGenerator::new(3);
        let parts: Vec<f32> = (0..3).flat_map(|_| g.randn(48)).collect();
        assert_eq!(bits(&parts), bits(&TorchGenerator::new(3).randn(144)));
    }
}
