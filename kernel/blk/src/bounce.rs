//! Bounce buffers for segments above a device's DMA address limit.

use hal::PhysAddr;

use crate::bio::{Bio, BioVec, bio_endio};
use crate::bioset::BioSet;
use crate::error::BlkError;
use crate::limits::QueueLimits;
use crate::slab::{Mempool, PoolBox, Wait};

/// Bytes of one bounce page.
pub const BOUNCE_PAGE: usize = 4096;
/// Pages one bounced bio may use; larger bios are split first.
pub const BOUNCE_PAGES: usize = 16;
/// Largest bio bounced in one piece.
pub const BOUNCE_MAX_BYTES: u32 = (BOUNCE_PAGE * BOUNCE_PAGES) as u32;

/// A page of low memory for bouncing.
#[repr(C, align(4096))]
pub struct BouncePage(pub [u8; BOUNCE_PAGE]);

/// The front pad of a bounce clone: the original bio and the pages.
pub struct BouncePad {
    orig: Option<Bio>,
    pages: heapless::Vec<PoolBox<BouncePage>, BOUNCE_PAGES>,
}

impl BouncePad {
    /// An empty pad (what `BioSet<BouncePad>::alloc` starts from).
    pub const fn new() -> Self {
        BouncePad {
            orig: None,
            pages: heapless::Vec::new(),
        }
    }
}

impl Default for BouncePad {
    fn default() -> Self {
        Self::new()
    }
}

/// Bounce pages (from a mempool whose slab lies below the DMA limit) and the bio set for the
/// clones that carry them.
pub struct Bouncer {
    pages: &'static Mempool<BouncePage>,
    set: &'static BioSet<BouncePad>,
}

/// Copies between the bio's segments and a linear run of pages (`to_pages`: write direction).
#[allow(unsafe_code)] // copies segment memory through `hal::mem`
fn copy_segments(bio: &Bio, pages: &[PoolBox<BouncePage>], to_pages: bool) {
    let mut off = 0usize;
    for v in bio.segments() {
        let (mut a, mut left) = (v.addr().0, v.len() as usize);
        while left > 0 {
            let (pi, po) = (off / BOUNCE_PAGE, off % BOUNCE_PAGE);
            let Some(p) = pages.get(pi) else { return };
            let n = left.min(BOUNCE_PAGE - po);
            let page_addr = hal::mem::virt_to_phys(p.addr() + po);
            // SAFETY: `a..a + n` is inside a segment of `bio`, under the segment contract
            // (`BioVec::new`): the bio's own memory until it completes, which it has not (the
            // clone carrying the pages is in flight or just finished). `page_addr..+n` is
            // inside a bounce page this clone owns (`n <= BOUNCE_PAGE - po`), reached through
            // the translation its address came from. The two never overlap.
            unsafe {
                if to_pages {
                    hal::mem::copy_phys(page_addr, PhysAddr(a), n);
                } else {
                    hal::mem::copy_phys(PhysAddr(a), page_addr, n);
                }
            }
            a += n as u64;
            left -= n;
            off += n;
        }
    }
}

fn bounce_end_io(mut clone: Bio) {
    let status = clone.status();
    let is_read = clone.op() == crate::bio::Op::Read;
    let Some(pad) = clone.front_mut::<BouncePad>() else {
        return;
    };
    let Some(orig) = pad.orig.take() else { return };
    if is_read && status.is_ok() {
        copy_segments(&orig, &pad.pages, false);
    }
    if let Err(e) = status {
        orig.fail(e);
    }
    drop(clone);
    bio_endio(orig);
}

impl Bouncer {
    /// A bouncer with pages from `pages` and clones from `set`.
    pub const fn new(pages: &'static Mempool<BouncePage>, set: &'static BioSet<BouncePad>) -> Self {
        Bouncer { pages, set }
    }

    /// Replaces `orig` (at most [`BOUNCE_MAX_BYTES`]) by a clone whose segments are bounce
    /// pages below `limits.dma_limit`; writes are copied now, reads on completion, and `orig`
    /// completes when the clone does.
    #[allow(unsafe_code)] // builds the clone's segments over bounce pages
    pub fn bounce(
        &'static self,
        orig: Bio,
        limits: &QueueLimits,
        wait: Wait,
    ) -> Result<Bio, (BlkError, Bio)> {
        let size = orig.size() as usize;
        if size > BOUNCE_MAX_BYTES as usize {
            return Err((BlkError::InvalidArgument, orig));
        }
        let npages = size.div_ceil(BOUNCE_PAGE);
        let mut clone = match self.set.alloc(BouncePad::new(), orig.op(), npages, wait) {
            Ok(c) => c,
            Err(e) => return Err((e, orig)),
        };
        clone.copy_meta_from(&orig);
        for i in 0..npages {
            let page = match self.pages.alloc(BouncePage([0; BOUNCE_PAGE]), wait) {
                Ok(p) => p,
                Err(_) => return Err((BlkError::NoMemory, orig)),
            };
            let addr = hal::mem::virt_to_phys(page.addr());
            if addr.0 + BOUNCE_PAGE as u64 - 1 > limits.dma_limit {
                return Err((BlkError::NoMemory, orig));
            }
            let len = (size - i * BOUNCE_PAGE).min(BOUNCE_PAGE) as u32;
            // SAFETY: the segment contract: `addr` is a bounce page (`len <= BOUNCE_PAGE`) from
            // a static mempool below the device's DMA limit (checked), at the physical address
            // `hal`'s translation gives for it; the clone's pad keeps the page until the clone
            // completes, and nothing else touches it meanwhile.
            let v = unsafe { BioVec::new(addr, len) };
            if let Err(e) = clone.add_vec(v) {
                return Err((e, orig));
            }
            if let Some(pad) = clone.front_mut::<BouncePad>() {
                let _ = pad.pages.push(page);
            }
        }
        if orig.op() == crate::bio::Op::Write
            && let Some(pad) = clone.front::<BouncePad>()
        {
            copy_segments(&orig, &pad.pages, true);
        }
        clone.set_end_io(bounce_end_io);
        if let Some(pad) = clone.front_mut::<BouncePad>() {
            pad.orig = Some(orig);
        }
        Ok(clone)
    }
}
