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
    /// Length of the run of bits clear in both `a` and `b` from bit `start`, at most `max`
    /// (bits past the end count as set), a word at a time.
    pub fn free_run(a: &Self, b: &Self, start: u64, max: u64) -> u64 {
        let mut len = 0u64;
        while len < max {
            let i = start + len;
            let w = (i / 64) as usize;
            let (Some(x), Some(y)) = (a.w.get(w), b.w.get(w)) else {
                break;
            };
            let bit = i % 64;
            // Used bits from `i` upward; the word's bits below `i` are shifted out.
            let used = (x | y) >> bit;
            let room = 64 - bit;
            let free = u64::from(used.trailing_zeros()).min(room);
            len += free;
            if free < room {
                break;
            }
        }
        len.min(max)
    }
    /// Sets bits `[start, start + len)` (bits past the end are ignored), a word at a time.
    pub fn set_range(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        let mut i = start;
        while i < end {
            let bit = i % 64;
            let n = (64 - bit).min(end - i);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            let Some(w) = self.w.get_mut((i / 64) as usize) else {
                break;
            };
            *w |= mask;
            i += n;
        }
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

    fn xorshift(r: &mut u64) -> u64 {
        *r ^= *r << 13;
        *r ^= *r >> 7;
        *r ^= *r << 17;
        *r
    }

    #[test]
    fn free_run_and_set_range_match_bit_by_bit() {
        let mut rng = 0x0bad_cafe_f00d_1234u64;
        for round in 0..300u64 {
            let (mut a, mut b) = (Bitmap::<4>::new(), Bitmap::<4>::new());
            // Sparse to dense used bits, so runs of every length up to whole words occur.
            let density = 2 + round % 40;
            for i in 0..256 {
                if xorshift(&mut rng).is_multiple_of(density) {
                    a.set(i);
                }
                if xorshift(&mut rng).is_multiple_of(density * 3) {
                    b.set(i);
                }
            }
            for _ in 0..20 {
                let start = xorshift(&mut rng) % 300;
                let max = xorshift(&mut rng) % 200;
                let mut want = 0;
                while want < max && Bitmap::free_in_both(&a, &b, start + want) {
                    want += 1;
                }
                assert_eq!(
                    Bitmap::free_run(&a, &b, start, max),
                    want,
                    "start {start} max {max}"
                );
                let mut by_bit = a.clone();
                for i in start..start + want {
                    by_bit.set(i);
                }
                let mut by_word = a.clone();
                by_word.set_range(start, want);
                assert!(by_word.w == by_bit.w, "set_range({start}, {want})");
            }
        }
        // The end of the map: past it nothing is free, and setting there does nothing.
        let (a, b) = (Bitmap::<1>::new(), Bitmap::<1>::new());
        assert_eq!(Bitmap::free_run(&a, &b, 60, 100), 4);
        assert_eq!(Bitmap::free_run(&a, &b, 64, 100), 0);
        let mut c = Bitmap::<1>::new();
        c.set_range(62, 10);
        assert_eq!(c.w[0], 0b11 << 62);
    }

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
