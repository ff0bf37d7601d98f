//! A small deterministic generator (xorshift), so that a seeded test replays from its seed.
//! Include with `#[path = "common/rng.rs"] mod rng;`.

/// The generator's state; never zero.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
