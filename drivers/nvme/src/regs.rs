//! Controller registers (BAR0): capabilities, configuration, status, admin queue addresses and
//! the doorbells.

use bitflags::bitflags;
use hal::Mmio;

/// Controller capabilities (64-bit).
pub const CAP: usize = 0x00;
/// Version.
pub const VS: usize = 0x08;
/// Interrupt mask set (INTx and MSI only).
pub const INTMS: usize = 0x0c;
/// Interrupt mask clear (INTx and MSI only).
pub const INTMC: usize = 0x10;
/// Controller configuration.
pub const CC: usize = 0x14;
/// Controller status.
pub const CSTS: usize = 0x1c;
/// Admin queue attributes.
pub const AQA: usize = 0x24;
/// Admin submission queue base address.
pub const ASQ: usize = 0x28;
/// Admin completion queue base address.
pub const ACQ: usize = 0x30;
/// First doorbell.
pub const DOORBELLS: usize = 0x1000;

bitflags! {
    /// Controller configuration (`CC`). Single bits are flags; the entry sizes are fields
    /// ([`Cc::io_queue_entry_sizes`]). Bits the driver does not name are kept as they are.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Cc: u32 {
        /// Enable.
        const EN = 1;
        /// Normal shutdown notification (`SHN` = 01b).
        const SHN_NORMAL = 1 << 14;
        const _ = !0;
    }
}

impl Cc {
    /// `IOSQES` and `IOCQES`: I/O submission and completion queue entries of `2^sq` and `2^cq`
    /// bytes.
    pub const fn io_queue_entry_sizes(sq: u32, cq: u32) -> Cc {
        Cc::from_bits_retain((sq & 0xf) << 16 | (cq & 0xf) << 20)
    }
    /// `IOSQES` (log2 of the submission queue entry size).
    pub const fn io_sq_entry_shift(self) -> u32 {
        (self.bits() >> 16) & 0xf
    }
    /// `IOCQES` (log2 of the completion queue entry size).
    pub const fn io_cq_entry_shift(self) -> u32 {
        (self.bits() >> 20) & 0xf
    }
}

bitflags! {
    /// Controller status (`CSTS`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Csts: u32 {
        /// Ready.
        const RDY = 1;
        /// Controller fatal status.
        const CFS = 1 << 1;
        /// NVM subsystem reset occurred.
        const NSSRO = 1 << 4;
        /// Processing paused.
        const PP = 1 << 5;
        const _ = !0;
    }
}

impl Csts {
    /// Ready and no fatal status: the controller answers commands.
    pub const fn is_operational(self) -> bool {
        self.bits() & (Csts::RDY.bits() | Csts::CFS.bits()) == Csts::RDY.bits()
    }
}

bitflags! {
    /// Interrupt vectors in `INTMS` (mask set) and `INTMC` (mask clear), INTx and MSI only.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct IntVectors: u32 {
        /// Vector 0 (the only one with INTx).
        const V0 = 1;
        const _ = !0;
    }
}

bitflags! {
    /// Controller capabilities (`CAP`, 64-bit). Single bits are flags; the multi-bit fields
    /// have accessors.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Cap: u64 {
        /// Contiguous queues required (`CQR`).
        const CQR = 1 << 16;
        /// NVM subsystem reset supported (`NSSRS`).
        const NSSRS = 1 << 36;
        /// The NVM command set (`CSS` bit 0).
        const CSS_NVM = 1 << 37;
        /// Boot partitions supported (`BPS`).
        const BPS = 1 << 45;
        const _ = !0;
    }
}

impl Cap {
    /// Entries of the largest I/O queue the controller takes (MQES + 1).
    pub fn max_queue_entries(self) -> u32 {
        (self.bits() & 0xffff) as u32 + 1
    }
    /// Physically contiguous queues required.
    pub fn contiguous_required(self) -> bool {
        self.contains(Cap::CQR)
    }
    /// Worst-case time for `CSTS.RDY` to follow `CC.EN`, in milliseconds.
    pub fn timeout_ms(self) -> u64 {
        ((self.bits() >> 24) & 0xff).max(1) * 500
    }
    /// Doorbell stride exponent: doorbells are `4 << DSTRD` bytes apart.
    pub fn doorbell_stride(self) -> u32 {
        ((self.bits() >> 32) & 0xf) as u32
    }
    /// The NVM command set is supported.
    pub fn nvm_command_set(self) -> bool {
        self.contains(Cap::CSS_NVM)
    }
    /// Smallest memory page size, as a power of two.
    pub fn page_shift_min(self) -> u32 {
        12 + ((self.bits() >> 48) & 0xf) as u32
    }
    /// Largest memory page size, as a power of two.
    pub fn page_shift_max(self) -> u32 {
        12 + ((self.bits() >> 52) & 0xf) as u32
    }
}

/// Byte offset of the submission queue `qid` tail doorbell.
pub fn sq_tail_doorbell(qid: u16, dstrd: u32) -> usize {
    DOORBELLS + (2 * qid as usize) * (4usize << dstrd)
}

/// Byte offset of the completion queue `qid` head doorbell.
pub fn cq_head_doorbell(qid: u16, dstrd: u32) -> usize {
    DOORBELLS + (2 * qid as usize + 1) * (4usize << dstrd)
}

/// The register window with the doorbell stride.
#[derive(Debug)]
pub struct Regs {
    mmio: Mmio,
    dstrd: u32,
}

impl Regs {
    /// Wraps BAR0 (at least the registers and the first doorbells).
    pub fn new(mmio: Mmio) -> Option<Regs> {
        if mmio.len() < DOORBELLS + 16 {
            return None;
        }
        let dstrd = Cap::from_bits_retain(mmio.read64(CAP)).doorbell_stride();
        Some(Regs { mmio, dstrd })
    }
    /// The capabilities.
    pub fn cap(&self) -> Cap {
        Cap::from_bits_retain(self.mmio.read64(CAP))
    }
    /// The version register.
    pub fn version(&self) -> u32 {
        self.mmio.read32(VS)
    }
    /// The configuration register.
    pub fn cc(&self) -> Cc {
        Cc::from_bits_retain(self.mmio.read32(CC))
    }
    /// Writes the configuration register.
    pub fn set_cc(&self, cc: Cc) {
        self.mmio.write32(CC, cc.bits())
    }
    /// The status register.
    pub fn csts(&self) -> Csts {
        Csts::from_bits_retain(self.mmio.read32(CSTS))
    }
    /// Masks interrupt vectors (`INTMS`; INTx and MSI only).
    pub fn mask_vectors(&self, v: IntVectors) {
        self.mmio.write32(INTMS, v.bits())
    }
    /// Unmasks interrupt vectors (`INTMC`; INTx and MSI only).
    pub fn unmask_vectors(&self, v: IntVectors) {
        self.mmio.write32(INTMC, v.bits())
    }
    /// Reads a 32-bit register.
    pub fn read32(&self, off: usize) -> u32 {
        self.mmio.read32(off)
    }
    /// Writes a 32-bit register.
    pub fn write32(&self, off: usize, v: u32) {
        self.mmio.write32(off, v)
    }
    /// Writes a 64-bit register as two 32-bit halves (low first).
    pub fn write64(&self, off: usize, v: u64) {
        self.mmio.write32(off, v as u32);
        self.mmio.write32(off + 4, (v >> 32) as u32);
    }
    /// Whether the doorbells of `qid` lie inside the window.
    pub fn has_queue(&self, qid: u16) -> bool {
        cq_head_doorbell(qid, self.dstrd) + 4 <= self.mmio.len()
    }
    /// The byte offsets of queue `qid`'s submission tail and completion head doorbells (for
    /// [`Regs::ring`]).
    pub fn doorbells(&self, qid: u16) -> (usize, usize) {
        (
            sq_tail_doorbell(qid, self.dstrd),
            cq_head_doorbell(qid, self.dstrd),
        )
    }
    /// Writes `value` to the doorbell at byte offset `off` (from [`Regs::doorbells`]).
    #[inline]
    pub fn ring(&self, off: usize, value: u16) {
        self.mmio.write32(off, value as u32);
    }
    /// Rings the submission queue tail doorbell.
    pub fn ring_sq(&self, qid: u16, tail: u16) {
        self.mmio
            .write32(sq_tail_doorbell(qid, self.dstrd), tail as u32);
    }
    /// Rings the completion queue head doorbell.
    pub fn ring_cq(&self, qid: u16, head: u16) {
        self.mmio
            .write32(cq_head_doorbell(qid, self.dstrd), head as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbells_follow_the_stride() {
        assert_eq!(sq_tail_doorbell(0, 0), 0x1000);
        assert_eq!(cq_head_doorbell(0, 0), 0x1004);
        assert_eq!(sq_tail_doorbell(1, 0), 0x1008);
        assert_eq!(cq_head_doorbell(1, 0), 0x100c);
        assert_eq!(sq_tail_doorbell(1, 2), 0x1000 + 2 * 16);
        assert_eq!(cq_head_doorbell(1, 2), 0x1000 + 3 * 16);
    }

    #[test]
    fn cap_fields() {
        // QEMU: MQES 2047, CQR, TO 15, DSTRD 0, NVM command set, MPSMIN 0, MPSMAX 4.
        let cap = Cap::from_bits_retain(0x7ff | 1 << 16 | 0xf << 24 | 1 << 37 | 4 << 52);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert!(cap.contiguous_required());
        assert_eq!(cap.timeout_ms(), 7500);
        assert_eq!(cap.doorbell_stride(), 0);
        assert!(cap.nvm_command_set());
        assert_eq!(cap.page_shift_min(), 12);
        assert_eq!(cap.page_shift_max(), 16);
        assert!(!cap.contains(Cap::NSSRS));
    }

    #[test]
    fn cc_and_csts() {
        let cc = Cc::io_queue_entry_sizes(6, 4) | Cc::EN;
        assert_eq!(cc.bits(), 6 << 16 | 4 << 20 | 1);
        assert_eq!((cc.io_sq_entry_shift(), cc.io_cq_entry_shift()), (6, 4));
        // Clearing EN keeps the fields.
        assert_eq!(cc.difference(Cc::EN).bits(), 6 << 16 | 4 << 20);
        assert!(Csts::from_bits_retain(1).is_operational());
        assert!(!Csts::from_bits_retain(3).is_operational());
        assert!(!Csts::from_bits_retain(0).is_operational());
        assert!(Csts::from_bits_retain(2).contains(Csts::CFS));
    }
}
