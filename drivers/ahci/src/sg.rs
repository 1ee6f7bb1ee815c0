//! Physical region descriptor tables (AHCI 4.2.3.3): scatter-gather entries from
//! `blk::map_sg` become PRDs of at most 4 MiB each, with an even byte count (the DBC field
//! holds count - 1, whose bit 0 must be 1) at a word-aligned address.

use blk::SgEntry;
use hal::DmaBuf;

use crate::cmd::{PRD_BYTES, PRDT_ENTRIES, PRDT_OFFSET};

/// Most bytes one PRD describes.
pub const PRD_MAX_BYTES: u32 = 4 << 20;

/// One physical region descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prd {
    /// Data base address (bit 0 clear).
    pub dba: u64,
    /// Byte count (even, 2..=4 MiB).
    pub bytes: u32,
}

impl Prd {
    /// The DBC dword: byte count minus one (interrupt-on-completion clear).
    pub fn dbc_dword(&self) -> u32 {
        (self.bytes - 1) & 0x003f_ffff
    }
}

/// Why a scatter-gather list cannot become a PRDT.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrdtError {
    /// An address or length is odd, or a length is zero.
    Misaligned,
    /// More PRDs than the table holds.
    TooManyEntries,
    /// An address above what the controller reaches (no 64-bit addressing).
    AboveLimit,
}

/// Turns `sg` into PRDs in `out` (entries over 4 MiB are cut); returns (entries, bytes).
/// `dma_limit` is the highest address the controller reaches.
pub fn build_prdt(
    sg: &[SgEntry],
    dma_limit: u64,
    out: &mut [Prd],
) -> Result<(usize, u32), PrdtError> {
    let max = out.len();
    for_each_prd(sg, dma_limit, max, |i, p| {
        if let Some(o) = out.get_mut(i) {
            *o = p;
        }
    })
}

/// Checks `sg` and writes its PRDs straight into the command table at `table_off` of `mem`
/// (at most [`PRDT_ENTRIES`] entries, cut at 4 MiB); returns (entries, bytes). On an error
/// the table holds a partial PRDT (the command must not be issued).
#[inline]
pub fn write_prdt_sg(
    mem: &DmaBuf,
    table_off: usize,
    sg: &[SgEntry],
    dma_limit: u64,
) -> Result<(usize, u32), PrdtError> {
    // One entry of at most 4 MiB (most requests): one PRD, the same checks.
    if let [e] = sg
        && e.len <= PRD_MAX_BYTES
    {
        check_entry(e, dma_limit)?;
        write_prd(
            mem,
            table_off,
            0,
            &Prd {
                dba: e.addr.0,
                bytes: e.len,
            },
        );
        return Ok((1, e.len));
    }
    for_each_prd(sg, dma_limit, PRDT_ENTRIES, |i, p| {
        write_prd(mem, table_off, i, &p)
    })
}

/// The checks and cuts of [`build_prdt`]: `emit(i, prd)` for every PRD, `i < max`.
#[inline(always)]
fn for_each_prd(
    sg: &[SgEntry],
    dma_limit: u64,
    max: usize,
    mut emit: impl FnMut(usize, Prd),
) -> Result<(usize, u32), PrdtError> {
    let (mut n, mut total) = (0usize, 0u32);
    for e in sg {
        check_entry(e, dma_limit)?;
        let (mut a, mut left) = (e.addr.0, e.len);
        while left > 0 {
            if n >= max {
                return Err(PrdtError::TooManyEntries);
            }
            let piece = left.min(PRD_MAX_BYTES);
            emit(
                n,
                Prd {
                    dba: a,
                    bytes: piece,
                },
            );
            n += 1;
            a += piece as u64;
            left -= piece;
        }
        total = total.wrapping_add(e.len);
    }
    Ok((n, total))
}

/// An entry's length and address are even and non-zero, and it ends within `dma_limit`.
#[inline(always)]
fn check_entry(e: &SgEntry, dma_limit: u64) -> Result<(), PrdtError> {
    if e.len == 0 || (e.len as u64 | e.addr.0) & 1 != 0 {
        return Err(PrdtError::Misaligned);
    }
    if e.addr
        .0
        .checked_add(e.len as u64 - 1)
        .is_none_or(|end| end > dma_limit)
    {
        return Err(PrdtError::AboveLimit);
    }
    Ok(())
}

/// Writes PRD `i` of the command table at `table_off`: address (DBA, DBAU) as one 64-bit
/// store, the reserved dword and DBC as another.
#[inline(always)]
fn write_prd(mem: &DmaBuf, table_off: usize, i: usize, p: &Prd) {
    let o = table_off + PRDT_OFFSET + i * PRD_BYTES;
    mem.write64(o, p.dba);
    mem.write64(o + 8, (p.dbc_dword() as u64) << 32);
}

/// Writes `prds` into the command table at `table_off` of `mem`.
pub fn write_prdt(mem: &DmaBuf, table_off: usize, prds: &[Prd]) {
    for (i, p) in prds.iter().enumerate() {
        write_prd(mem, table_off, i, p);
    }
}

/// Reads PRD `i` back from a command table (what the controller would see).
pub fn read_prd(mem: &DmaBuf, table_off: usize, i: usize) -> Prd {
    let o = table_off + PRDT_OFFSET + i * PRD_BYTES;
    Prd {
        dba: mem.read32(o) as u64 | (mem.read32(o + 4) as u64) << 32,
        bytes: (mem.read32(o + 12) & 0x003f_ffff) + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hal::PhysAddr;

    fn sg(a: u64, l: u32) -> SgEntry {
        SgEntry {
            addr: PhysAddr(a),
            len: l,
        }
    }

    #[test]
    fn entries_are_cut_at_4_mib() {
        let mut out = [Prd::default(); 8];
        let (n, bytes) = build_prdt(
            &[sg(0x1000, 512), sg(0x100_0000, 9 << 20)],
            u64::MAX,
            &mut out,
        )
        .unwrap();
        assert_eq!((n, bytes), (4, 512 + (9 << 20)));
        assert_eq!(
            out[1],
            Prd {
                dba: 0x100_0000,
                bytes: 4 << 20
            }
        );
        assert_eq!(
            out[2],
            Prd {
                dba: 0x140_0000,
                bytes: 4 << 20
            }
        );
        assert_eq!(
            out[3],
            Prd {
                dba: 0x180_0000,
                bytes: 1 << 20
            }
        );
        assert_eq!(out[0].dbc_dword(), 511);
        assert_eq!(out[1].dbc_dword(), (4 << 20) - 1);
        assert_eq!(out[1].dbc_dword() & 1, 1, "byte count minus one is odd");
    }

    #[test]
    fn odd_addresses_lengths_and_limits_are_refused() {
        let mut out = [Prd::default(); 2];
        assert_eq!(
            build_prdt(&[sg(0x1001, 512)], u64::MAX, &mut out),
            Err(PrdtError::Misaligned)
        );
        assert_eq!(
            build_prdt(&[sg(0x1000, 511)], u64::MAX, &mut out),
            Err(PrdtError::Misaligned)
        );
        assert_eq!(
            build_prdt(&[sg(0x1000, 0)], u64::MAX, &mut out),
            Err(PrdtError::Misaligned)
        );
        assert_eq!(
            build_prdt(&[sg(0xffff_f000, 0x2000)], 0xffff_ffff, &mut out),
            Err(PrdtError::AboveLimit)
        );
        assert_eq!(
            build_prdt(&[sg(0, 2), sg(4, 2), sg(8, 2)], u64::MAX, &mut out),
            Err(PrdtError::TooManyEntries)
        );
    }

    #[test]
    fn a_full_table_round_trips_through_dma_memory() {
        crate::fake::dma_init();
        let mem = DmaBuf::alloc(crate::cmd::TABLE_BYTES, 128).unwrap();
        let list: Vec<SgEntry> = (0..crate::cmd::PRDT_ENTRIES as u64)
            .map(|i| sg(0x10_0000 + i * 0x2000, 512 + 2 * i as u32))
            .collect();
        let mut out = [Prd::default(); crate::cmd::PRDT_ENTRIES];
        let (n, _) = build_prdt(&list, u64::MAX, &mut out).unwrap();
        assert_eq!(n, crate::cmd::PRDT_ENTRIES);
        write_prdt(&mem, 0, &out[..n]);
        for (i, e) in list.iter().enumerate() {
            assert_eq!(
                read_prd(&mem, 0, i),
                Prd {
                    dba: e.addr.0,
                    bytes: e.len
                }
            );
        }
        // The reserved dword stays zero.
        assert_eq!(mem.read32(PRDT_OFFSET + 8), 0);
    }

    #[test]
    fn prdt_written_straight_from_the_sg_list_matches_build_prdt() {
        crate::fake::dma_init();
        let mem = DmaBuf::alloc(crate::cmd::TABLE_BYTES, 128).unwrap();
        let list = [
            sg(0x1_2345_6000, 4096),
            sg(0x200_0000, 9 << 20),
            sg(0x10, 2),
        ];
        let mut out = [Prd::default(); 8];
        let (n, bytes) = build_prdt(&list, u64::MAX, &mut out).unwrap();
        assert_eq!(write_prdt_sg(&mem, 0, &list, u64::MAX), Ok((n, bytes)));
        assert_eq!(n, 5);
        for (i, p) in out[..n].iter().enumerate() {
            assert_eq!(read_prd(&mem, 0, i), *p);
            assert_eq!(mem.read32(PRDT_OFFSET + i * PRD_BYTES + 8), 0);
        }
        // One entry (its own path), and the same refusals.
        assert_eq!(
            write_prdt_sg(&mem, 0, &[sg(0x7_0000, 4096)], u64::MAX),
            Ok((1, 4096))
        );
        assert_eq!(
            read_prd(&mem, 0, 0),
            Prd {
                dba: 0x7_0000,
                bytes: 4096
            }
        );
        assert_eq!(
            write_prdt_sg(&mem, 0, &[sg(0x7_0000, 0)], u64::MAX),
            Err(PrdtError::Misaligned)
        );
        assert_eq!(
            write_prdt_sg(&mem, 0, &[sg(0x7_0000, 4097)], u64::MAX),
            Err(PrdtError::Misaligned)
        );
        assert_eq!(
            write_prdt_sg(&mem, 0, &[sg(0x1001, 512)], u64::MAX),
            Err(PrdtError::Misaligned)
        );
        assert_eq!(
            write_prdt_sg(&mem, 0, &[sg(0xffff_f000, 0x2000)], 0xffff_ffff),
            Err(PrdtError::AboveLimit)
        );
        let many: Vec<SgEntry> = (0..PRDT_ENTRIES as u64 + 1)
            .map(|i| sg(0x10_0000 + i * 0x2000, 512))
            .collect();
        assert_eq!(
            write_prdt_sg(&mem, 0, &many, u64::MAX),
            Err(PrdtError::TooManyEntries)
        );
    }
}
