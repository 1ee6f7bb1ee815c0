//! The RAM block device of the host benches: it counts what it is asked to do, and its copies
//! are two `#[inline(never)]` functions (`ram_read`, `ram_write`) that callgrind figures
//! subtract, as they stand for the block driver.

use tinyfs::{BLOCK_SIZE, BlockIo, IoError, IoErrorKind, Run, WriteFlags};

/// A RAM block device that counts what it is asked to do.
pub struct Ram {
    data: Vec<u8>,
    /// Blocks written.
    pub writes: u64,
    /// Write runs (one device request each).
    pub ios: u64,
    /// Writes with `PREFLUSH` or `FUA`.
    pub flushes: u64,
}

impl Ram {
    /// A zeroed device of `blocks` blocks.
    pub fn new(blocks: u64) -> Ram {
        Ram {
            data: vec![0; blocks as usize * BLOCK_SIZE],
            writes: 0,
            ios: 0,
            flushes: 0,
        }
    }
}

#[inline(never)]
fn ram_read(data: &[u8], block: u64, buf: &mut [u8]) {
    let o = block as usize * BLOCK_SIZE;
    buf.copy_from_slice(&data[o..o + buf.len()]);
}

#[inline(never)]
fn ram_write(data: &mut [u8], block: u64, src: &[u8]) {
    let o = block as usize * BLOCK_SIZE;
    data[o..o + src.len()].copy_from_slice(src);
}

impl BlockIo for &mut Ram {
    fn block_count(&self) -> u64 {
        (self.data.len() / BLOCK_SIZE) as u64
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), IoError> {
        if (block as usize * BLOCK_SIZE + buf.len()) > self.data.len() {
            return Err(IoError::new(block, IoErrorKind::OutOfRange));
        }
        ram_read(&self.data, block, buf);
        Ok(())
    }
    fn write(&mut self, runs: &[Run<'_>], flags: WriteFlags) -> Result<(), IoError> {
        if flags.preflush || flags.fua {
            self.flushes += 1;
        }
        for r in runs {
            if (r.block as usize * BLOCK_SIZE + r.data.len()) > self.data.len() {
                return Err(IoError::new(r.block, IoErrorKind::OutOfRange));
            }
            ram_write(&mut self.data, r.block, r.data);
            self.writes += (r.data.len() / BLOCK_SIZE) as u64;
            self.ios += 1;
        }
        Ok(())
    }
}
