//! Bounce buffers on AHCI without 64-bit addressing (`block/bounce.rs`), forced with
//! `ahci_bounce` (profile `x86_64-ahci-ports`): the last AHCI disk's DMA limit is the last byte
//! of the bounce pages, so every buffer the kernel allocates elsewhere lies above it and must
//! be copied through bounce pages, while the other disk, with 64-bit addressing, never bounces.

use blk::mem::DmaRegion;
use blk::{BioVec, BlkError, Op, Wait, submit_bio_wait};
use hal::DmaBuf;

use crate::block::{self, DiskKind, IO_SET, ahci, bounce, cpu_ctx};
use crate::ktest::{Outcome, fail};

/// Bytes the test writes and reads back: four times the largest bio bounced in one piece.
const BYTES: usize = 4 * blk::bounce::BOUNCE_MAX_BYTES as usize;
/// Where on the disk (sectors): 2 MiB in.
const SECTOR: u64 = 4096;

fn region(len: usize) -> Result<DmaRegion, Outcome> {
    DmaBuf::alloc(len, 4096)
        .map(DmaRegion::from_dma_buf)
        .map_err(|e| fail(format_args!("no DMA memory: {:?}", e)))
}

/// One bio over `segs` to `dev`, waited for.
fn io(
    dev: &'static dyn blk::BlockDevice,
    op: Op,
    sector: u64,
    segs: &[BioVec],
) -> Result<(), BlkError> {
    let mut b = IO_SET.alloc((), op, segs.len(), Wait::Hook(block::wait))?;
    b.set_dev(dev);
    b.set_sector(sector);
    for v in segs {
        b.add_vec(*v)?;
    }
    submit_bio_wait(cpu_ctx(), b, block::wait).0
}

/// The segments of `r` the test uses: one run of three quarters, then two scattered pieces
/// (several segments per bio, some larger than one bounce).
fn segments(r: &DmaRegion) -> Result<[BioVec; 3], Outcome> {
    let seg = |off: usize, len: usize| {
        r.segment(off, len as u32)
            .ok_or_else(|| fail(format_args!("segment {}+{}", off, len)))
    };
    let big = BYTES / 4 * 3;
    Ok([
        seg(0, big)?,
        seg(big + 8192, 4096)?,
        seg(big + 16384, BYTES / 4 - 4096)?,
    ])
}

ktest! {
    #[only_with = "ahci_bounce"]
    fn ahci_without_64_bit_dma_bounces_buffers_above_its_limit() -> TestResult {
        if !DiskKind::Ahci.attached() {
            return Err(Outcome::NoDisk(DiskKind::Ahci));
        }
        let disk = ahci::disks().last().ok_or_else(|| fail(format_args!("no AHCI disk")))?;
        let limit = disk.queue.limits().dma_limit;
        check!(!disk.hw.info().addr64, "the forced disk still says 64-bit");
        check_eq!(limit, bounce::low_limit());
        check!(bounce::pages_below(limit), "bounce pages above the limit {:#x}", limit);
        // The other disks keep 64-bit addressing and never bounce.
        for other in ahci::disks().filter(|d| !core::ptr::eq(*d, disk)) {
            check_eq!(other.queue.limits().dma_limit, u64::MAX);
        }
        let mut out = region(BYTES + 32768)?;
        let mut back = region(BYTES + 32768)?;
        for r in [&out, &back] {
            let at = r.phys().0;
            check!(at > limit, "test layout: buffer at {:#x} is not above the limit {:#x}", at, limit);
        }
        for (i, b) in out.as_mut_slice().iter_mut().enumerate() {
            *b = (i as u32).wrapping_mul(0x9e37_79b9).to_le_bytes()[2] ^ (i >> 12) as u8;
        }
        let before = disk.queue.stats().snapshot();
        let others0: u64 = ahci::disks()
            .filter(|d| !core::ptr::eq(*d, disk))
            .map(|d| d.queue.stats().snapshot().bounces)
            .sum();
        let dev: &'static dyn blk::BlockDevice = disk.queue;
        io(dev, Op::Write, SECTOR, &segments(&out)?)
            .map_err(|e| fail(format_args!("bounced write: {:?}", e)))?;
        back.as_mut_slice().fill(0);
        io(dev, Op::Read, SECTOR, &segments(&back)?)
            .map_err(|e| fail(format_args!("bounced read: {:?}", e)))?;
        for v in segments(&out)? {
            let (o, len) = ((v.addr().0 - out.phys().0) as usize, v.len() as usize);
            check!(
                out.as_slice()[o..o + len] == back.as_slice()[o..o + len],
                "{} bytes at buffer offset {} read back differ",
                len,
                o
            );
        }
        let after = disk.queue.stats().snapshot();
        // Each bio is cut to bounce-sized pieces (64 KiB): at least four for each direction.
        check!(
            after.bounces - before.bounces >= 8,
            "bounces {} -> {}",
            before.bounces,
            after.bounces
        );
        check_eq!(after.bio_errors, before.bio_errors);
        check_eq!(bounce::pages_in_use(), 0);
        let others: u64 = ahci::disks()
            .filter(|d| !core::ptr::eq(*d, disk))
            .map(|d| d.queue.stats().snapshot().bounces)
            .sum();
        check_eq!(others, others0);
        Ok(())
    }
}
