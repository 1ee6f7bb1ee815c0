//! Data pointers from a scatter-gather list: PRP entry 1 and 2, PRP lists (chained over
//! several list pages when one is not enough), and SGLs (data block descriptors, a segment
//! descriptor naming a list of them).
//!
//! List pages come from a per-tag budget in one DMA buffer; nothing is allocated here.

use blk::SgEntry;
use hal::DmaBuf;

use crate::cmd::DataPtr;

/// The controller memory page size this driver uses (`CC.MPS` = 0).
pub const PAGE: u64 = 4096;
/// PRP entries per list page.
pub const PRPS_PER_PAGE: usize = (PAGE / 8) as usize;
/// SGL descriptors per list page.
pub const SGLS_PER_PAGE: usize = (PAGE / 16) as usize;

/// SGL descriptor types (byte 15).
pub mod sgl {
    /// Data block.
    pub const DATA_BLOCK: u8 = 0x00;
    /// Segment (another list follows this one's last descriptor).
    pub const SEGMENT: u8 = 0x20;
    /// Last segment.
    pub const LAST_SEGMENT: u8 = 0x30;
}

/// Why a list cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrpError {
    /// No data segments.
    Empty,
    /// A segment breaks the PRP rules (an inner start or end off a page boundary, an odd
    /// address): the block layer should have split the request.
    NotExpressible,
    /// More entries than the list-page budget holds.
    TooLong,
}

/// The list pages of one command: `pages` pages from byte `first` of `buf`.
#[derive(Clone, Copy, Debug)]
pub struct ListPages<'a> {
    /// The buffer.
    pub buf: &'a DmaBuf,
    /// Byte offset of the first page (page aligned).
    pub first: usize,
    /// Pages in the budget.
    pub pages: usize,
}

impl ListPages<'_> {
    fn phys(&self, page: usize) -> u64 {
        self.buf.phys().0 + (self.first + page * PAGE as usize) as u64
    }
    fn put64(&self, page: usize, slot: usize, v: u64) {
        self.buf
            .write64(self.first + page * PAGE as usize + slot * 8, v);
    }
}

/// Most PRP entries (prp1 included) `pages` list pages express.
pub const fn max_prp_entries(pages: usize) -> usize {
    if pages == 0 {
        return 2;
    }
    1 + pages * (PRPS_PER_PAGE - 1) + 1
}

/// Checks the PRP rules and counts the entries: the first segment may start anywhere
/// (dword aligned), every later one starts on a page; every segment but the last ends on a page.
pub fn prp_count(sg: &[SgEntry]) -> Result<usize, PrpError> {
    if sg.is_empty() {
        return Err(PrpError::Empty);
    }
    let mut n = 0usize;
    for (i, e) in sg.iter().enumerate() {
        let (a, len) = (e.addr.0, e.len as u64);
        if len == 0 || a & 3 != 0 {
            return Err(PrpError::NotExpressible);
        }
        if i > 0 && a % PAGE != 0 {
            return Err(PrpError::NotExpressible);
        }
        if i + 1 < sg.len() && (a + len) % PAGE != 0 {
            return Err(PrpError::NotExpressible);
        }
        let first_page = a / PAGE;
        let last_page = (a + len - 1) / PAGE;
        n += (last_page - first_page + 1) as usize;
    }
    Ok(n)
}

/// The PRP entries of `sg` in order: the first segment's start, then every page start.
fn prp_entries(sg: &[SgEntry]) -> impl Iterator<Item = u64> + '_ {
    sg.iter().flat_map(|e| {
        let (a, end) = (e.addr.0, e.addr.0 + e.len as u64);
        let first = a & !(PAGE - 1);
        let pages = (end - 1 - first) / PAGE + 1;
        (0..pages).map(move |p| if p == 0 { a } else { first + p * PAGE })
    })
}

/// Builds PRP1/PRP2 for `sg`, writing a PRP list into `list` when more than two entries are
/// needed; when a list page fills up and more than one entry remains, its last slot points to
/// the next page. Returns the data pointer and the number of list pages used.
pub fn build_prp(sg: &[SgEntry], list: &ListPages<'_>) -> Result<(DataPtr, usize), PrpError> {
    // One segment over one or two pages (4 KiB I/O): PRP1 and PRP2, no list.
    if let [e] = sg {
        let (a, len) = (e.addr.0, e.len as u64);
        let first = a & !(PAGE - 1);
        if len > 0 && a & 3 == 0 {
            if a + len <= first + PAGE {
                return Ok((DataPtr::Prp(a, 0), 0));
            }
            if a + len <= first + 2 * PAGE {
                return Ok((DataPtr::Prp(a, first + PAGE), 0));
            }
        }
    }
    let n = prp_count(sg)?;
    if n > max_prp_entries(list.pages) {
        return Err(PrpError::TooLong);
    }
    let mut it = prp_entries(sg);
    let prp1 = it.next().ok_or(PrpError::Empty)?;
    match n {
        1 => return Ok((DataPtr::Prp(prp1, 0), 0)),
        2 => return Ok((DataPtr::Prp(prp1, it.next().ok_or(PrpError::Empty)?), 0)),
        _ => {}
    }
    let (mut page, mut slot, mut left) = (0usize, 0usize, n - 1);
    for e in it {
        if slot == PRPS_PER_PAGE - 1 && left > 1 {
            list.put64(page, slot, list.phys(page + 1));
            page += 1;
            slot = 0;
        }
        list.put64(page, slot, e);
        slot += 1;
        left -= 1;
    }
    Ok((DataPtr::Prp(prp1, list.phys(0)), page + 1))
}

fn put_sgl(list: &ListPages<'_>, page: usize, slot: usize, addr: u64, len: u32, ty: u8) {
    let off = list.first + page * PAGE as usize + slot * 16;
    list.buf.write64(off, addr);
    list.buf.write32(off + 8, len);
    list.buf.write32(off + 12, (ty as u32) << 24);
}

/// Builds an SGL for `sg`: one data block descriptor in the command for one segment, else a
/// last-segment descriptor naming a list of data block descriptors (chained through segment
/// descriptors when a page is not enough). Returns the data pointer and list pages used.
pub fn build_sgl(sg: &[SgEntry], list: &ListPages<'_>) -> Result<(DataPtr, usize), PrpError> {
    match sg {
        [] => Err(PrpError::Empty),
        [e] => Ok((DataPtr::Sgl(e.addr.0, e.len, sgl::DATA_BLOCK), 0)),
        _ => {
            // Per page: SGLS_PER_PAGE data blocks when it is the last, one fewer plus a
            // segment descriptor otherwise.
            let per_chained = SGLS_PER_PAGE - 1;
            let mut pages = 1;
            let mut left = sg.len();
            while left > SGLS_PER_PAGE {
                left -= per_chained;
                pages += 1;
            }
            if pages > list.pages {
                return Err(PrpError::TooLong);
            }
            let first_len = if pages == 1 { sg.len() } else { SGLS_PER_PAGE };
            let first_ty = if pages == 1 {
                sgl::LAST_SEGMENT
            } else {
                sgl::SEGMENT
            };
            let mut rest = sg;
            for page in 0..pages {
                let last_page = page + 1 == pages;
                let take = if last_page { rest.len() } else { per_chained };
                for (slot, e) in rest[..take].iter().enumerate() {
                    put_sgl(list, page, slot, e.addr.0, e.len, sgl::DATA_BLOCK);
                }
                rest = &rest[take..];
                if !last_page {
                    let next_last = page + 2 == pages;
                    let next_n = if next_last { rest.len() } else { SGLS_PER_PAGE };
                    let ty = if next_last {
                        sgl::LAST_SEGMENT
                    } else {
                        sgl::SEGMENT
                    };
                    put_sgl(
                        list,
                        page,
                        per_chained,
                        list.phys(page + 1),
                        (next_n * 16) as u32,
                        ty,
                    );
                }
            }
            Ok((
                DataPtr::Sgl(list.phys(0), (first_len * 16) as u32, first_ty),
                pages,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::dma_init;
    use hal::PhysAddr;

    fn sg(a: u64, len: u32) -> SgEntry {
        SgEntry {
            addr: PhysAddr(a),
            len,
        }
    }

    #[test]
    fn one_and_two_entries_need_no_list() {
        dma_init();
        let buf = DmaBuf::alloc(2 * 4096, 4096).unwrap();
        let l = ListPages {
            buf: &buf,
            first: 0,
            pages: 2,
        };
        assert_eq!(
            build_prp(&[sg(0x10_0200, 512)], &l),
            Ok((DataPtr::Prp(0x10_0200, 0), 0))
        );
        assert_eq!(
            build_prp(&[sg(0x10_0200, 4096)], &l),
            Ok((DataPtr::Prp(0x10_0200, 0x10_1000), 0))
        );
        assert_eq!(
            build_prp(&[sg(0x10_0000, 4096), sg(0x20_0000, 4096)], &l),
            Ok((DataPtr::Prp(0x10_0000, 0x20_0000), 0))
        );
    }

    #[test]
    fn one_segment_shortcut_agrees_with_the_entry_walk() {
        dma_init();
        let buf = DmaBuf::alloc(2 * 4096, 4096).unwrap();
        let l = ListPages {
            buf: &buf,
            first: 0,
            pages: 2,
        };
        for off in [0u64, 4, 0x200, 0xff8, 0xffc, 2, 0x201] {
            for len in [
                0u32, 4, 512, 0xe00, 0x1000, 0x1004, 0x1e00, 0x2000, 0x2004, 0x3000,
            ] {
                let e = sg(0x40_0000 + off, len);
                let got = build_prp(&[e], &l);
                // The general rules: count, then the entries in order.
                let want = prp_count(&[e]).map(|n| {
                    let v: Vec<u64> = prp_entries(&[e]).collect();
                    assert_eq!(v.len(), n);
                    match n {
                        1 => (DataPtr::Prp(v[0], 0), 0),
                        2 => (DataPtr::Prp(v[0], v[1]), 0),
                        _ => (DataPtr::Prp(v[0], buf.phys().0), 1),
                    }
                });
                assert_eq!(got, want, "segment at +{off:#x}, {len:#x} bytes");
            }
        }
    }

    #[test]
    fn list_entries_are_page_starts() {
        dma_init();
        let buf = DmaBuf::alloc(2 * 4096, 4096).unwrap();
        let l = ListPages {
            buf: &buf,
            first: 4096,
            pages: 1,
        };
        let list = [
            sg(0x10_0800, 0x1800),
            sg(0x30_0000, 0x2000),
            sg(0x50_0000, 0x200),
        ];
        let (d, pages) = build_prp(&list, &l).unwrap();
        assert_eq!(pages, 1);
        assert_eq!(d, DataPtr::Prp(0x10_0800, buf.phys().0 + 4096));
        let got: Vec<u64> = (0..4).map(|i| buf.read64(4096 + 8 * i)).collect();
        assert_eq!(got, [0x10_1000, 0x30_0000, 0x30_1000, 0x50_0000]);
    }

    #[test]
    fn long_lists_chain_pages() {
        dma_init();
        let buf = DmaBuf::alloc(3 * 4096, 4096).unwrap();
        let l = ListPages {
            buf: &buf,
            first: 0,
            pages: 3,
        };
        // 700 pages from an unaligned start: 701 entries, 700 in lists.
        let (d, pages) = build_prp(&[sg(0x100_0010, 700 * 4096)], &l).unwrap();
        assert_eq!(pages, 2);
        assert_eq!(d, DataPtr::Prp(0x100_0010, buf.phys().0));
        // Page 0: 511 entries then the chain pointer; page 1: the remaining 189.
        assert_eq!(buf.read64(0), 0x100_1000);
        assert_eq!(buf.read64(510 * 8), 0x100_1000 + 510 * 4096);
        assert_eq!(buf.read64(511 * 8), buf.phys().0 + 4096);
        assert_eq!(buf.read64(4096), 0x100_1000 + 511 * 4096);
        assert_eq!(buf.read64(4096 + 188 * 8), 0x100_1000 + 699 * 4096);
        // Exactly one full page: 512 list entries, no chain pointer.
        let (_, pages) = build_prp(&[sg(0x200_0000, 513 * 4096)], &l).unwrap();
        assert_eq!(pages, 1);
        assert_eq!(buf.read64(511 * 8), 0x200_0000 + 512 * 4096);
        assert_eq!(max_prp_entries(3), 1 + 3 * 511 + 1);
        let too_long = [sg(0x100_0000, (max_prp_entries(3) as u32 + 1) * 4096)];
        assert_eq!(build_prp(&too_long, &l), Err(PrpError::TooLong));
    }

    #[test]
    fn gaps_are_refused() {
        assert_eq!(prp_count(&[]), Err(PrpError::Empty));
        assert_eq!(
            prp_count(&[sg(0x1000, 512), sg(0x3000, 512)]),
            Err(PrpError::NotExpressible)
        );
        assert_eq!(
            prp_count(&[sg(0x1000, 4096), sg(0x3200, 512)]),
            Err(PrpError::NotExpressible)
        );
        assert_eq!(prp_count(&[sg(0x1002, 512)]), Err(PrpError::NotExpressible));
        assert_eq!(prp_count(&[sg(0x1e00, 4096 + 512)]), Ok(2));
    }

    #[test]
    fn sgl_lists() {
        dma_init();
        let buf = DmaBuf::alloc(2 * 4096, 4096).unwrap();
        let l = ListPages {
            buf: &buf,
            first: 0,
            pages: 2,
        };
        assert_eq!(
            build_sgl(&[sg(0x1234, 100)], &l),
            Ok((DataPtr::Sgl(0x1234, 100, sgl::DATA_BLOCK), 0))
        );
        let list = [sg(0x1000, 512), sg(0x3000, 1024), sg(0x9000, 4)];
        let (d, pages) = build_sgl(&list, &l).unwrap();
        assert_eq!(
            (d, pages),
            (DataPtr::Sgl(buf.phys().0, 48, sgl::LAST_SEGMENT), 1)
        );
        assert_eq!((buf.read64(16), buf.read32(24)), (0x3000, 1024));
        // 300 descriptors: 255 + a segment descriptor, then 45.
        let many: Vec<SgEntry> = (0..300).map(|i| sg(0x10_0000 + i * 0x1000, 512)).collect();
        let (d, pages) = build_sgl(&many, &l).unwrap();
        assert_eq!(
            (d, pages),
            (DataPtr::Sgl(buf.phys().0, 4096, sgl::SEGMENT), 2)
        );
        assert_eq!(buf.read64(255 * 16), buf.phys().0 + 4096);
        assert_eq!(buf.read32(255 * 16 + 8), 45 * 16);
        assert_eq!(buf.read32(255 * 16 + 12) >> 24, sgl::LAST_SEGMENT as u32);
        assert_eq!(buf.read64(4096 + 44 * 16), 0x10_0000 + 299 * 0x1000);
    }
}
