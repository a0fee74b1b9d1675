//! xorshift64: a reproducible stream of numbers without a crate, shared by
//! the userspace tests, the index benchmark and `dm-snap-cow gen`
//! (included with `#[path]`).

/// A xorshift64 generator; the seed must not be 0.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
