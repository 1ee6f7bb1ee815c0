//! Controller registers (BAR0): capabilities, configuration, status, admin queue addresses and
//! the doorbells.

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

/// `CC` bits.
pub mod cc {
    /// Enable.
    pub const EN: u32 = 1;
    /// I/O submission queue entry size: 2^6 = 64 bytes.
    pub const IOSQES_64: u32 = 6 << 16;
    /// I/O completion queue entry size: 2^4 = 16 bytes.
    pub const IOCQES_16: u32 = 4 << 20;
    /// Normal shutdown notification.
    pub const SHN_NORMAL: u32 = 1 << 14;
}

/// `CSTS` bits.
pub mod csts {
    /// Ready.
    pub const RDY: u32 = 1;
    /// Controller fatal status.
    pub const CFS: u32 = 1 << 1;
}

/// The capabilities register, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Entries of the largest I/O queue the controller takes (MQES + 1).
    pub fn max_queue_entries(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }
    /// Physically contiguous queues required.
    pub fn contiguous_required(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Worst-case time for `CSTS.RDY` to follow `CC.EN`, in milliseconds.
    pub fn timeout_ms(self) -> u64 {
        ((self.0 >> 24) & 0xff).max(1) * 500
    }
    /// Doorbell stride exponent: doorbells are `4 << DSTRD` bytes apart.
    pub fn doorbell_stride(self) -> u32 {
        ((self.0 >> 32) & 0xf) as u32
    }
    /// The NVM command set is supported.
    pub fn nvm_command_set(self) -> bool {
        self.0 & (1 << 37) != 0
    }
    /// Smallest memory page size, as a power of two.
    pub fn page_shift_min(self) -> u32 {
        12 + ((self.0 >> 48) & 0xf) as u32
    }
    /// Largest memory page size, as a power of two.
    pub fn page_shift_max(self) -> u32 {
        12 + ((self.0 >> 52) & 0xf) as u32
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
        let dstrd = Cap(mmio.read64(CAP)).doorbell_stride();
        Some(Regs { mmio, dstrd })
    }
    /// The capabilities.
    pub fn cap(&self) -> Cap {
        Cap(self.mmio.read64(CAP))
    }
    /// The version register.
    pub fn version(&self) -> u32 {
        self.mmio.read32(VS)
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
        let cap = Cap(0x7ff | 1 << 16 | 0xf << 24 | 1 << 37 | 4 << 52);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert!(cap.contiguous_required());
        assert_eq!(cap.timeout_ms(), 7500);
        assert_eq!(cap.doorbell_stride(), 0);
        assert!(cap.nvm_command_set());
        assert_eq!(cap.page_shift_min(), 12);
        assert_eq!(cap.page_shift_max(), 16);
    }
}
