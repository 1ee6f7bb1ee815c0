//! Submission and completion rings in DMA memory, completion entries read by phase bit, and
//! the table of command ids in flight that every completion is checked against.

use core::sync::atomic::{Ordering, fence};

use hal::{DmaBuf, dma::DmaError};

use crate::cmd::{Command, SQE_SIZE};
use crate::spec::Status;

/// Bytes of one completion queue entry.
pub const CQE_SIZE: usize = 16;

/// A submission queue: the driver writes entries at `tail`; the controller reports how far it
/// has read (`SQHD` in each completion).
pub struct SubQueue {
    buf: DmaBuf,
    entries: u16,
    tail: u16,
    head: u16,
}

impl SubQueue {
    /// A zeroed ring of `entries` (2..=65536) entries.
    pub fn new(entries: u16) -> Result<SubQueue, DmaError> {
        if entries < 2 {
            return Err(DmaError::BadRequest);
        }
        let buf = DmaBuf::alloc(entries as usize * SQE_SIZE, 4096)?;
        Ok(SubQueue {
            buf,
            entries,
            tail: 0,
            head: 0,
        })
    }
    /// Physical address of the ring.
    pub fn phys(&self) -> u64 {
        self.buf.phys().0
    }
    /// Entries.
    pub fn entries(&self) -> u16 {
        self.entries
    }
    /// The tail the doorbell gets.
    pub fn tail(&self) -> u16 {
        self.tail
    }
    /// No room for another entry.
    pub fn is_full(&self) -> bool {
        (self.tail + 1) % self.entries == self.head
    }
    /// Entries the controller has not consumed yet.
    pub fn pending(&self) -> u16 {
        (self.tail + self.entries - self.head) % self.entries
    }
    /// Writes `cmd` at the tail and advances it; `false` if the ring is full.
    pub fn push(&mut self, cmd: &Command) -> bool {
        if self.is_full() {
            return false;
        }
        cmd.write_to(&self.buf, self.tail as usize * SQE_SIZE);
        self.tail = (self.tail + 1) % self.entries;
        true
    }
    /// Records the controller's head (`SQHD`); `false` (and ignored) if it is not a ring
    /// index between the old head and the tail.
    pub fn set_head(&mut self, head: u16) -> bool {
        if head >= self.entries {
            return false;
        }
        let ahead = (head + self.entries - self.head) % self.entries;
        if ahead > self.pending() {
            return false;
        }
        self.head = head;
        true
    }
    /// Empties the ring (after a controller reset).
    pub fn reset(&mut self) {
        self.buf.as_mut_slice().fill(0);
        self.tail = 0;
        self.head = 0;
    }
    /// The entry at `index` (tests, traces).
    pub fn entry(&self, index: u16) -> Command {
        Command::read_from(&self.buf, (index % self.entries) as usize * SQE_SIZE)
    }
}

/// One completion entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cqe {
    /// Command specific result (dword 0).
    pub result: u32,
    /// Submission queue head pointer.
    pub sq_head: u16,
    /// Submission queue id.
    pub sq_id: u16,
    /// Command id.
    pub cid: u16,
    /// Status field (phase bit removed).
    pub status: Status,
}

/// A completion queue: the controller writes entries, inverting the phase bit on each pass;
/// the driver consumes them from `head`.
pub struct CompQueue {
    buf: DmaBuf,
    entries: u16,
    head: u16,
    phase: bool,
}

impl CompQueue {
    /// A zeroed ring of `entries` entries (the first pass has phase 1).
    pub fn new(entries: u16) -> Result<CompQueue, DmaError> {
        if entries < 2 {
            return Err(DmaError::BadRequest);
        }
        let buf = DmaBuf::alloc(entries as usize * CQE_SIZE, 4096)?;
        Ok(CompQueue {
            buf,
            entries,
            head: 0,
            phase: true,
        })
    }
    /// Physical address of the ring.
    pub fn phys(&self) -> u64 {
        self.buf.phys().0
    }
    /// Entries.
    pub fn entries(&self) -> u16 {
        self.entries
    }
    /// The head the doorbell gets.
    pub fn head(&self) -> u16 {
        self.head
    }
    /// The entry at the head if the controller has written it (its phase bit is the current
    /// phase). The rest of the entry is read after the phase bit.
    pub fn peek(&self) -> Option<Cqe> {
        let off = self.head as usize * CQE_SIZE;
        let dw3 = self.buf.read32(off + 12);
        if (dw3 >> 16) & 1 != self.phase as u32 {
            return None;
        }
        fence(Ordering::Acquire);
        let dw2 = self.buf.read32(off + 8);
        Some(Cqe {
            result: self.buf.read32(off),
            sq_head: dw2 as u16,
            sq_id: (dw2 >> 16) as u16,
            cid: dw3 as u16,
            status: Status::from_bits_retain((dw3 >> 17) as u16),
        })
    }
    /// Consumes the head entry.
    pub fn advance(&mut self) {
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
    }
    /// Empties the ring (after a controller reset).
    pub fn reset(&mut self) {
        self.buf.as_mut_slice().fill(0);
        self.head = 0;
        self.phase = true;
    }
    /// Test hook: writes an entry at ring index `index` as the controller would.
    pub fn inject(
        &self,
        index: u16,
        result: u32,
        sq: (u16, u16),
        cid: u16,
        status: u16,
        phase: bool,
    ) {
        let off = (index % self.entries) as usize * CQE_SIZE;
        self.buf.write32(off, result);
        self.buf.write32(off + 8, (sq.1 as u32) << 16 | sq.0 as u32);
        self.buf.write32(
            off + 12,
            (status as u32) << 17 | (phase as u32) << 16 | cid as u32,
        );
    }
}

/// Why a completion's command id is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidError {
    /// The tag bits name no slot.
    OutOfRange,
    /// The slot has no command in flight (never submitted, or completed already).
    NotInFlight,
    /// The slot's command in flight has another id (a stale or corrupt completion).
    Stale,
}

/// Command ids in flight, one per tag: `tag | generation << 10` (tags below 1024), so a
/// completion for an older command on the same tag is told apart.
pub struct CidTable<const N: usize> {
    cids: [u16; N],
    generation: [u8; N],
}

const NONE: u16 = u16::MAX;
/// Bits of the tag in a command id.
pub const TAG_BITS: u32 = 10;
/// Command ids with this bit are the driver's own (bring-up, abort), never a tag's.
pub const INTERNAL_CID: u16 = 0x8000;

impl<const N: usize> Default for CidTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> CidTable<N> {
    /// Nothing in flight.
    pub const fn new() -> Self {
        assert!(N <= 1 << TAG_BITS);
        CidTable {
            cids: [NONE; N],
            generation: [0; N],
        }
    }
    /// A fresh command id for `tag`, recorded as in flight; `None` if the tag is out of range
    /// or already has a command in flight.
    pub fn issue(&mut self, tag: u16) -> Option<u16> {
        let i = tag as usize;
        if i >= N || self.cids[i] != NONE {
            return None;
        }
        self.generation[i] = (self.generation[i] + 1) & 0x1f;
        let cid = tag | (self.generation[i] as u16) << TAG_BITS;
        self.cids[i] = cid;
        Some(cid)
    }
    /// Checks a completion's id: the tag it names, which is then no longer in flight.
    pub fn complete(&mut self, cid: u16) -> Result<u16, CidError> {
        let tag = cid & ((1 << TAG_BITS) - 1);
        let i = tag as usize;
        if cid & INTERNAL_CID != 0 || i >= N {
            return Err(CidError::OutOfRange);
        }
        match self.cids[i] {
            NONE => Err(CidError::NotInFlight),
            c if c != cid => Err(CidError::Stale),
            _ => {
                self.cids[i] = NONE;
                Ok(tag)
            }
        }
    }
    /// The id in flight for `tag`.
    pub fn in_flight(&self, tag: u16) -> Option<u16> {
        self.cids.get(tag as usize).copied().filter(|&c| c != NONE)
    }
    /// Forgets a tag's command (it will never complete: the controller was reset).
    pub fn forget(&mut self, tag: u16) {
        if let Some(c) = self.cids.get_mut(tag as usize) {
            *c = NONE;
        }
    }
    /// Commands in flight.
    pub fn count(&self) -> usize {
        self.cids.iter().filter(|&&c| c != NONE).count()
    }
    /// Forgets every command in flight, calling `f` with each tag.
    pub fn drain(&mut self, mut f: impl FnMut(u16)) {
        for (t, c) in self.cids.iter_mut().enumerate() {
            if *c != NONE {
                *c = NONE;
                f(t as u16);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::dma_init;

    #[test]
    fn phase_bit_walks_the_ring() {
        dma_init();
        let mut cq = CompQueue::new(4).unwrap();
        assert_eq!(cq.peek(), None, "zeroed ring is empty (phase 0)");
        for i in 0..4 {
            cq.inject(i, i as u32, (i + 1, 1), 10 + i, 0, true);
        }
        for i in 0..4u16 {
            let e = cq.peek().unwrap();
            assert_eq!(
                (e.cid, e.result, e.sq_head, e.sq_id),
                (10 + i, i as u32, i + 1, 1)
            );
            cq.advance();
        }
        // Wrapped: old entries have phase 1, now stale.
        assert_eq!(cq.head(), 0);
        assert_eq!(cq.peek(), None);
        cq.inject(0, 0, (0, 1), 20, 0x281, false);
        let e = cq.peek().unwrap();
        assert_eq!(e.cid, 20);
        assert_eq!(e.status, Status::new(2, 0x81));
        cq.reset();
        assert_eq!(cq.peek(), None);
    }

    #[test]
    fn ids_are_checked() {
        let mut t = CidTable::<64>::new();
        let a = t.issue(5).unwrap();
        assert_eq!(t.issue(5), None, "one command per tag");
        assert_eq!(t.issue(64), None);
        assert_eq!(
            t.complete(5),
            Err(CidError::Stale),
            "generation 0 is never issued"
        );
        assert_eq!(t.complete(6), Err(CidError::NotInFlight));
        assert_eq!(t.complete(1000), Err(CidError::OutOfRange));
        assert_eq!(t.complete(INTERNAL_CID | 5), Err(CidError::OutOfRange));
        assert_eq!(t.complete(a), Ok(5));
        assert_eq!(t.complete(a), Err(CidError::NotInFlight), "completed twice");
        let b = t.issue(5).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.complete(a), Err(CidError::Stale), "an older command's id");
        t.issue(7).unwrap();
        let mut seen = Vec::new();
        t.drain(|tag| seen.push(tag));
        assert_eq!(seen, [5, 7]);
        assert_eq!(t.count(), 0);
        // Generations wrap within their bits.
        for _ in 0..100 {
            let c = t.issue(3).unwrap();
            assert_eq!(c & 0x3ff, 3);
            assert!(c & INTERNAL_CID == 0);
            t.complete(c).unwrap();
        }
    }

    #[test]
    fn sq_head_is_validated() {
        dma_init();
        let mut sq = SubQueue::new(4).unwrap();
        let c = Command::flush(1);
        assert!(sq.push(&c) && sq.push(&c) && sq.push(&c));
        assert!(!sq.push(&c), "one slot stays empty");
        assert!(!sq.set_head(9));
        assert!(sq.set_head(2));
        assert!(!sq.set_head(1), "head never moves back");
        assert!(sq.push(&c));
        assert_eq!(sq.pending(), 2);
        assert_eq!(sq.entry(3).opcode(), 0);
    }
}
