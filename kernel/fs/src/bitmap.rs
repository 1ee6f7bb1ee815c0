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
    /// Bits clear in both `a` and `b` among `[0, n)`, counted word by word from the word of
    /// bit `from` round to it again, stopping once `enough` are found: the exact count when it
    /// is below `enough`, otherwise some count `>= enough`. (An allocation checks that much
    /// space is left without counting the whole bitmap: free bits are usually near the
    /// allocation cursor.)
    pub fn free_at_least(a: &Self, b: &Self, n: u64, from: u64, enough: u64) -> u64 {
        let words = (n.div_ceil(64) as usize).min(W);
        if words == 0 {
            return 0;
        }
        let start = ((from / 64) as usize).min(words - 1);
        let mut free = 0u64;
        for k in 0..words {
            let i = (start + k) % words;
            let lo = i as u64 * 64;
            let mut used = a.w[i] | b.w[i];
            if n - lo < 64 {
                used |= !((1u64 << (n - lo)) - 1);
            }
            free += u64::from((!used).count_ones());
            if free >= enough {
                break;
            }
        }
        free
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

#[cfg(test)]
mod tests {
    use super::Bitmap;

    #[test]
    fn free_at_least_matches_the_full_count() {
        let mut rng = 0x1234_5678_9abc_def1u64;
        for round in 0..200u64 {
            let (mut a, mut b) = (Bitmap::<4>::new(), Bitmap::<4>::new());
            let n = 1 + round % 256;
            for i in 0..256 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if rng.is_multiple_of(3) {
                    a.set(i);
                }
                if rng.is_multiple_of(5) {
                    b.set(i);
                }
            }
            let exact = n - Bitmap::count_union(&a, &b, n);
            for from in [0, 63, 64, 100, 255, 1000] {
                for enough in [0, 1, 10, exact, exact + 1, 300] {
                    let got = Bitmap::free_at_least(&a, &b, n, from, enough);
                    if exact < enough {
                        assert_eq!(got, exact, "n {n} from {from} enough {enough}");
                    } else {
                        assert!(got >= enough && got <= exact, "n {n} from {from}");
                    }
                }
            }
        }
    }
}
