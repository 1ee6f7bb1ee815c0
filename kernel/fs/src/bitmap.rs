//! A fixed-size block bitmap.

/// `W * 64` bits.
#[derive(Clone)]
pub struct Bitmap<const W: usize> {
    w: [u64; W],
}

impl<const W: usize> Bitmap<W> {
    /// All clear.
    pub const fn new() -> Self {
        Bitmap { w: [0; W] }
    }
    /// Number of bits.
    pub const fn bits() -> u64 {
        W as u64 * 64
    }
    /// Clears every bit.
    pub fn clear_all(&mut self) {
        self.w.fill(0);
    }
    /// Bit `i` (bits past the end read as set).
    pub fn get(&self, i: u64) -> bool {
        match self.w.get((i / 64) as usize) {
            Some(w) => w & (1 << (i % 64)) != 0,
            None => true,
        }
    }
    /// Sets bit `i`; returns its old value (past the end: `true`).
    pub fn set(&mut self, i: u64) -> bool {
        match self.w.get_mut((i / 64) as usize) {
            Some(w) => {
                let old = *w & (1 << (i % 64)) != 0;
                *w |= 1 << (i % 64);
                old
            }
            None => true,
        }
    }
    /// Clears bit `i`.
    pub fn clear(&mut self, i: u64) {
        if let Some(w) = self.w.get_mut((i / 64) as usize) {
            *w &= !(1 << (i % 64));
        }
    }
    /// Copies `other`.
    pub fn copy_from(&mut self, other: &Self) {
        self.w = other.w;
    }
    /// Bits set in `[0, n)`.
    pub fn count(&self, n: u64) -> u64 {
        (0..n).filter(|&i| self.get(i)).count() as u64
    }
    /// Bits set in `a | b` among `[0, n)`.
    pub fn count_union(a: &Self, b: &Self, n: u64) -> u64 {
        let mut total = 0u64;
        for (i, (x, y)) in a.w.iter().zip(b.w.iter()).enumerate() {
            let lo = i as u64 * 64;
            if lo >= n {
                break;
            }
            let mut v = x | y;
            if n - lo < 64 {
                v &= (1u64 << (n - lo)) - 1;
            }
            total += v.count_ones() as u64;
        }
        total
    }
    /// True when bit `i` is clear in both.
    pub fn free_in_both(a: &Self, b: &Self, i: u64) -> bool {
        !a.get(i) && !b.get(i)
    }
}

impl<const W: usize> Default for Bitmap<W> {
    fn default() -> Self {
        Self::new()
    }
}
