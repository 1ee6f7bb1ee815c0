//! Bounded text: formatting into fixed-size strings (the kernel has no heap) without losing
//! silently what did not fit.

use core::fmt::{self, Write};

/// The end of a text that did not fit its buffer.
pub const CUT_MARK: &str = "[...truncated]";

/// Writes into a bounded string. Text past its end is dropped and the string then ends with
/// [`CUT_MARK`]; writing never fails, so a `write!` always completes.
pub struct Bounded<'a, const N: usize> {
    out: &'a mut heapless::String<N>,
    cut: bool,
}

impl<'a, const N: usize> Bounded<'a, N> {
    /// Appends to `out` (which must have room for [`CUT_MARK`]: `N` of at least its length).
    pub fn new(out: &'a mut heapless::String<N>) -> Self {
        Bounded { out, cut: false }
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

impl<const N: usize> Write for Bounded<'_, N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.cut {
            return Ok(());
        }
        for c in s.chars() {
            if self.out.len() + c.len_utf8() > N.saturating_sub(CUT_MARK.len()) {
                self.cut = true;
                let _ = self.out.push_str(CUT_MARK);
                return Ok(());
            }
            let _ = self.out.push(c);
        }
        Ok(())
    }
}

/// Formats `args` into a new string of at most `N` bytes, ending with [`CUT_MARK`] when cut.
pub fn format<const N: usize>(args: fmt::Arguments<'_>) -> heapless::String<N> {
    let mut out = heapless::String::new();
    let _ = Bounded::new(&mut out).write_fmt(args);
    out
}
