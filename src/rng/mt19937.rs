//! The 32-bit Mersenne Twister with PyTorch's CPU bookkeeping (`at::mt19937`): seeding by
//! `init_genrand`, the twist done lazily on the draw that finds the state used up.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_B0DF;
const UPPER: u32 = 0x8000_0000;
const LOWER: u32 = 0x7FFF_FFFF;

#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; N],
    /// Draws left before the next twist, plus one (torch decrements before it checks).
    left: u32,
    next: usize,
}

impl Mt19937 {
    /// The engine after `torch.manual_seed(seed)`: only the low 32 bits seed it.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        state[0] = seed as u32;
        for i in 1..N {
            let p = state[i - 1];
            state[i] = 1_812_433_253u32.wrapping_mul(p ^ (p >> 30)).wrapping_add(i as u32);
        }
        // A fresh engine twists on its first draw.
        Self { state, left: 1, next: 0 }
    }

    /// One tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        self.left -= 1;
        if self.left == 0 {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9D2C_5680;
        y ^= (y << 15) & 0xEFC6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        let mix = |u: u32, v: u32| (((u & UPPER) | (v & LOWER)) >> 1) ^ if v & 1 == 1 { MATRIX_A } else { 0 };
        let s = &mut self.state;
        for j in 0..N - M {
            s[j] = s[j + M] ^ mix(s[j], s[j + 1]);
        }
        for j in N - M..N - 1 {
            s[j] = s[j + M - N] ^ mix(s[j], s[j + 1]);
        }
        s[N - 1] = s[M - 1] ^ mix(s[N - 1], s[0]);
        self.left = N as u32;
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_42_first_words_are_torchs() {
        // TORCH_RNG.md section 10: torch.Generator().manual_seed(42) raw words 0-3.
        let mut g = Mt19937::new(42);
        let words: Vec<u32> = (0..4).map(|_| g.next_u32()).collect();
        assert_eq!(words, [0x5fe1dc66, 0xcbea3db3, 0xf362035c, 0x2ef5950e]);
    }

    #[test]
    fn matches_the_reference_mt19937_stream_across_twists() {
        // The 10000th output of the reference mt19937 seeded 5489 (C++ [rand.predef]).
        let mut g = Mt19937::new(5489);
        let last = (0..10_000).map(|_| g.next_u32()).last().unwrap();
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn only_the_low_32_bits_seed_the_engine() {
        let (mut a, mut b) = (Mt19937::new(5), Mt19937::new((1 << 32) + 5));
        for _ in 0..700 {
            assert_eq!(a.next_u32(), b.next_u32());
        }
    }
}
