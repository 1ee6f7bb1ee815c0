//! A hostile controller: completions changed, repeated, made up or dropped, and `CSTS.CFS`
//! raised, as a seeded generator decides (the hostile-device tests). The model runs commands
//! as always; what it posts goes through [`Hostile::tamper`] first.

/// A tiny xorshift generator (64-bit state; never 0).
#[derive(Clone, Copy, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; mixed so nearby seeds differ).
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.bits() % n
    }
    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < per_mille as u64
    }
}

/// What the hostile controller does to a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A random command id.
    WrongCid,
    /// The entry, then the same entry again.
    Repeat,
    /// The entry, then an entry with a command id completed before (stale).
    StaleCid,
    /// A command id whose tag bits name no slot (tag 128..1023).
    OutOfRangeCid,
    /// A command id with the driver's internal bit.
    InternalCid,
    /// Written with the wrong phase bit: the driver never sees it (nor anything after it).
    WrongPhase,
    /// An SQ head beyond the submission queue.
    SqHeadOutOfRange,
    /// An SQ head behind the last one reported.
    SqHeadBackwards,
    /// Another submission queue's id.
    WrongSqId,
    /// Random status bits.
    GarbageStatus,
    /// The entry, then a made-up entry (random id, status, head, queue).
    Spurious,
    /// Never posted.
    Drop,
    /// Posted, then `CSTS.CFS` raised.
    Fatal,
}

/// Every kind, in order.
pub const KINDS: [Kind; 13] = [
    Kind::WrongCid,
    Kind::Repeat,
    Kind::StaleCid,
    Kind::OutOfRangeCid,
    Kind::InternalCid,
    Kind::WrongPhase,
    Kind::SqHeadOutOfRange,
    Kind::SqHeadBackwards,
    Kind::WrongSqId,
    Kind::GarbageStatus,
    Kind::Spurious,
    Kind::Drop,
    Kind::Fatal,
];

/// One completion entry as the model would post it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Dword 0.
    pub result: u32,
    /// SQ head.
    pub sq_head: u16,
    /// SQ id.
    pub sq_id: u16,
    /// Command id.
    pub cid: u16,
    /// Status field (15 bits).
    pub status: u16,
    /// Write the phase bit inverted.
    pub flip_phase: bool,
}

/// The hostile behaviour of a model (`Model::hostile`).
#[derive(Clone, Debug)]
pub struct Hostile {
    rng: Rng,
    /// Completions tampered with, per mille.
    pub rate: u32,
    /// Kinds in use (bit `k` for `KINDS[k]`).
    pub kinds: u32,
    /// Admin queue completions are tampered with too.
    pub admin: bool,
    /// What was done, per kind (`KINDS` order).
    pub counts: [u64; KINDS.len()],
    recent: [u16; 8],
    recent_at: usize,
}

impl Hostile {
    /// Behaviour from `seed`: `rate` per mille of completions, the kinds in `kinds`.
    pub fn new(seed: u64, rate: u32, kinds: u32, admin: bool) -> Hostile {
        Hostile {
            rng: Rng::new(seed),
            rate,
            kinds,
            admin,
            counts: [0; KINDS.len()],
            recent: [0; 8],
            recent_at: 0,
        }
    }

    /// What to post instead of `e` (up to two entries, in order), and whether to raise
    /// `CSTS.CFS` afterwards. `sq_entries` is the size of the entry's submission queue.
    pub fn tamper(&mut self, e: Entry, sq_entries: u16) -> ([Option<Entry>; 2], bool) {
        let stale = self.recent[self.rng.below(8) as usize];
        self.recent[self.recent_at] = e.cid;
        self.recent_at = (self.recent_at + 1) % self.recent.len();
        if self.kinds == 0 || !self.rng.chance(self.rate) {
            return ([Some(e), None], false);
        }
        let kind = loop {
            let k = self.rng.below(KINDS.len() as u64) as usize;
            if self.kinds & 1 << k != 0 {
                self.counts[k] += 1;
                break KINDS[k];
            }
        };
        let r = self.rng.bits();
        let mut t = e;
        let mut extra = None;
        let mut fatal = false;
        match kind {
            Kind::WrongCid => t.cid = r as u16,
            Kind::Repeat => extra = Some(e),
            Kind::StaleCid => extra = Some(Entry { cid: stale, ..e }),
            Kind::OutOfRangeCid => t.cid = (128 + (r % 896) as u16) | (r >> 16) as u16 & 0x7c00,
            Kind::InternalCid => t.cid |= 0x8000,
            Kind::WrongPhase => t.flip_phase = true,
            Kind::SqHeadOutOfRange => {
                t.sq_head = sq_entries.saturating_add((r % 1000) as u16);
            }
            Kind::SqHeadBackwards => {
                t.sq_head = e.sq_head.wrapping_sub(1 + (r % 8) as u16) % sq_entries.max(1)
            }
            Kind::WrongSqId => t.sq_id = e.sq_id.wrapping_add(1 + (r % 3) as u16),
            Kind::GarbageStatus => t.status = (r as u16 & 0x7fff) | 1,
            Kind::Spurious => {
                extra = Some(Entry {
                    result: (r >> 32) as u32,
                    sq_head: (r >> 16) as u16 % sq_entries.max(1),
                    sq_id: e.sq_id,
                    cid: r as u16 & 0x83ff,
                    status: (r >> 48) as u16 & 0x7fff,
                    flip_phase: false,
                })
            }
            Kind::Drop => return ([None, None], false),
            Kind::Fatal => fatal = true,
        }
        ([Some(t), extra], fatal)
    }
}

/// Byte offsets of the Identify fields the driver reads (controller, namespace and the
/// active namespace list share the page layout only by offset).
const IDENTIFY_FIELDS: [usize; 24] = [
    0, 1, 4, 7, 25, 26, 77, 99, 128, 130, 131, 132, 134, 135, 516, 517, 519, 520, 525, 531, 536, 8,
    12, 60,
];

/// Sets `n` bytes of an Identify page to random values, half of them on the fields the driver
/// reads.
pub fn garble_identify(rng: &mut Rng, n: u32, page: &mut [u8]) {
    for _ in 0..n {
        let off = if rng.chance(500) {
            IDENTIFY_FIELDS[rng.below(IDENTIFY_FIELDS.len() as u64) as usize]
        } else {
            rng.below(page.len() as u64) as usize
        };
        if let Some(b) = page.get_mut(off) {
            *b = rng.bits() as u8;
        }
    }
}
