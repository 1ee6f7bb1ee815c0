//! Pure request-building and used-ring checking logic (no hardware, tested on the host).
//!
//! A request is one descriptor chain: the header (device-readable), the data segments
//! (device-readable for writes, device-writable for reads), for discard and write-zeroes one
//! range segment (device-readable), and the status byte (device-writable, last).

use crate::spec::req_type;

/// What a request does, as the device sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Read into the scatter-gather list.
    Read,
    /// Write from the scatter-gather list.
    Write,
    /// Flush the volatile cache.
    Flush,
    /// Discard `sectors` sectors.
    Discard,
    /// Write zeroes to `sectors` sectors.
    WriteZeroes,
}

impl RequestKind {
    /// The header's `type` field.
    pub const fn wire_type(self) -> u32 {
        match self {
            RequestKind::Read => req_type::IN,
            RequestKind::Write => req_type::OUT,
            RequestKind::Flush => req_type::FLUSH,
            RequestKind::Discard => req_type::DISCARD,
            RequestKind::WriteZeroes => req_type::WRITE_ZEROES,
        }
    }

    /// Whether the request carries data segments.
    pub const fn has_data(self) -> bool {
        matches!(self, RequestKind::Read | RequestKind::Write)
    }

    /// Whether the request changes the medium (refused on read-only devices; flush is not).
    pub const fn modifies(self) -> bool {
        matches!(
            self,
            RequestKind::Write | RequestKind::Discard | RequestKind::WriteZeroes
        )
    }
}

/// The shape of one descriptor chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainPlan {
    /// Device-readable descriptors (header, write data, range segment).
    pub readable: u16,
    /// Device-writable descriptors (read data, status).
    pub writable: u16,
    /// The least `len` a well-behaved device reports in the used ring: every byte it had to
    /// write (read data and the status byte).
    pub min_used_len: u32,
}

impl ChainPlan {
    /// Descriptors the chain takes.
    pub const fn descriptors(&self) -> u16 {
        self.readable + self.writable
    }
}

/// Plans the chain of a request with `segments` data segments totalling `data_len` bytes.
pub const fn plan(kind: RequestKind, segments: u16, data_len: u32) -> ChainPlan {
    match kind {
        RequestKind::Read => ChainPlan {
            readable: 1,
            writable: segments + 1,
            min_used_len: data_len + 1,
        },
        RequestKind::Write => ChainPlan {
            readable: 1 + segments,
            writable: 1,
            min_used_len: 1,
        },
        RequestKind::Flush => ChainPlan {
            readable: 1,
            writable: 1,
            min_used_len: 1,
        },
        RequestKind::Discard | RequestKind::WriteZeroes => ChainPlan {
            readable: 2,
            writable: 1,
            min_used_len: 1,
        },
    }
}

/// No tag / no head.
pub const NONE: u16 = u16::MAX;

/// Why a used-ring entry was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsedError {
    /// The id is not a descriptor index of the ring.
    IdOutOfRange(u16),
    /// The id names no chain in flight (never submitted, or completed already).
    NotInFlight(u16),
}

/// Which tag owns the chain starting at each descriptor: the driver's trusted record of what is
/// in flight, checked against every id the device returns.
#[derive(Clone, Debug)]
pub struct HeadTable<const RING: usize> {
    tag_of_head: [u16; RING],
    in_flight: u16,
}

impl<const RING: usize> Default for HeadTable<RING> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const RING: usize> HeadTable<RING> {
    /// Nothing in flight.
    pub const fn new() -> Self {
        HeadTable {
            tag_of_head: [NONE; RING],
            in_flight: 0,
        }
    }

    /// Records that `head` now carries `tag`.
    pub fn insert(&mut self, head: u16, tag: u16) {
        debug_assert_eq!(
            self.tag_of_head[head as usize], NONE,
            "head reused while in flight"
        );
        self.tag_of_head[head as usize] = tag;
        self.in_flight += 1;
    }

    /// Checks a used id without changing anything: the tag it completes.
    pub fn check(&self, id: u16) -> Result<u16, UsedError> {
        match self.tag_of_head.get(id as usize) {
            None => Err(UsedError::IdOutOfRange(id)),
            Some(&NONE) => Err(UsedError::NotInFlight(id)),
            Some(&tag) => Ok(tag),
        }
    }

    /// Ends the chain at `head` (after a successful [`HeadTable::check`]).
    pub fn remove(&mut self, head: u16) -> u16 {
        let tag = core::mem::replace(&mut self.tag_of_head[head as usize], NONE);
        if tag != NONE {
            self.in_flight -= 1;
        }
        tag
    }

    /// Chains in flight.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Forgets every chain, returning their tags through `f` (device reset).
    pub fn drain(&mut self, mut f: impl FnMut(u16)) {
        for t in self.tag_of_head.iter_mut() {
            if *t != NONE {
                f(core::mem::replace(t, NONE));
            }
        }
        self.in_flight = 0;
    }
}

/// The split-ring event-index rule: notify when `event` lies in `[old, new)` (mod 2^16).
pub const fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_shapes() {
        let r = plan(RequestKind::Read, 3, 12288);
        assert_eq!((r.readable, r.writable, r.min_used_len), (1, 4, 12289));
        let w = plan(RequestKind::Write, 2, 1024);
        assert_eq!(
            (w.readable, w.writable, w.min_used_len, w.descriptors()),
            (3, 1, 1, 4)
        );
        assert_eq!(plan(RequestKind::Flush, 0, 0).descriptors(), 2);
        assert_eq!(plan(RequestKind::Discard, 0, 0).descriptors(), 3);
        assert!(RequestKind::Discard.modifies() && !RequestKind::Flush.modifies());
    }

    #[test]
    fn used_ids_are_checked() {
        let mut t: HeadTable<8> = HeadTable::new();
        t.insert(3, 17);
        assert_eq!(t.check(3), Ok(17));
        assert_eq!(t.check(8), Err(UsedError::IdOutOfRange(8)));
        assert_eq!(t.check(0xffff), Err(UsedError::IdOutOfRange(0xffff)));
        assert_eq!(t.check(2), Err(UsedError::NotInFlight(2)));
        assert_eq!(t.remove(3), 17);
        assert_eq!(
            t.check(3),
            Err(UsedError::NotInFlight(3)),
            "a second completion is refused"
        );
        t.insert(1, 4);
        t.insert(5, 6);
        let mut seen = [0u16; 2];
        let mut n = 0;
        t.drain(|tag| {
            seen[n] = tag;
            n += 1;
        });
        assert_eq!((seen, t.in_flight()), ([4, 6], 0));
    }

    #[test]
    fn event_index_rule() {
        // Device asked to be told once avail idx passes 5: adding 5 → 6 crosses it.
        assert!(need_event(5, 6, 5));
        assert!(!need_event(5, 5, 4));
        assert!(need_event(5, 9, 2));
        assert!(!need_event(9, 9, 2));
        // Wrap-around.
        assert!(need_event(0xfffe, 2, 0xfff0));
        assert!(!need_event(3, 2, 0xfff0));
    }
}
