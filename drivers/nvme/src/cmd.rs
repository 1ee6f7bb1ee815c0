//! Submission queue entries: a 64-byte command built as sixteen dwords, written to queue
//! memory with volatile accessors.

use hal::DmaBuf;

use crate::spec::{admin, nvm};

/// Bytes of one submission queue entry.
pub const SQE_SIZE: usize = 64;

/// How the data pointer is laid out (`PSDT`, command dword 0 bits 15:14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPtr {
    /// No data.
    None,
    /// PRP entry 1 and 2.
    Prp(u64, u64),
    /// One SGL descriptor (16 bytes: address, length, type in the last byte).
    Sgl(u64, u32, u8),
}

/// One command: dwords 0..16 as the controller reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The dwords.
    pub dw: [u32; 16],
}

impl Command {
    /// A command with `opcode` for namespace `nsid`, everything else zero.
    pub const fn new(opcode: u8, nsid: u32) -> Command {
        let mut dw = [0u32; 16];
        dw[0] = opcode as u32;
        dw[1] = nsid;
        Command { dw }
    }
    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.dw[0] as u8
    }
    /// Sets the command id (dword 0 bits 31:16).
    pub fn set_cid(&mut self, cid: u16) {
        self.dw[0] = (self.dw[0] & 0xffff) | (cid as u32) << 16;
    }
    /// The command id.
    pub fn cid(&self) -> u16 {
        (self.dw[0] >> 16) as u16
    }
    /// Sets the data pointer (dwords 6..10) and `PSDT`.
    pub fn set_data(&mut self, d: DataPtr) {
        self.dw[0] &= !(3 << 14);
        match d {
            DataPtr::None => self.dw[6..10].fill(0),
            DataPtr::Prp(p1, p2) => {
                self.dw[6] = p1 as u32;
                self.dw[7] = (p1 >> 32) as u32;
                self.dw[8] = p2 as u32;
                self.dw[9] = (p2 >> 32) as u32;
            }
            DataPtr::Sgl(addr, len, ty) => {
                self.dw[0] |= 1 << 14;
                self.dw[6] = addr as u32;
                self.dw[7] = (addr >> 32) as u32;
                self.dw[8] = len;
                self.dw[9] = (ty as u32) << 24;
            }
        }
    }
    /// Read, write or write zeroes of `blocks` (≥ 1) logical blocks at `lba`.
    pub fn rw(opcode: u8, nsid: u32, lba: u64, blocks: u32, fua: bool) -> Command {
        let mut c = Command::new(opcode, nsid);
        c.dw[10] = lba as u32;
        c.dw[11] = (lba >> 32) as u32;
        c.dw[12] = (blocks - 1) & 0xffff;
        if fua {
            c.dw[12] |= 1 << 30;
        }
        c
    }
    /// Flush.
    pub fn flush(nsid: u32) -> Command {
        Command::new(nvm::FLUSH, nsid)
    }
    /// Dataset management, deallocate, over `ranges` ranges (the range list is the data).
    pub fn deallocate(nsid: u32, ranges: u32) -> Command {
        let mut c = Command::new(nvm::DSM, nsid);
        c.dw[10] = ranges - 1;
        c.dw[11] = 1 << 2;
        c
    }
    /// Identify with `cns` for `nsid` (4 KiB of data).
    pub fn identify(cns: u32, nsid: u32) -> Command {
        let mut c = Command::new(admin::IDENTIFY, nsid);
        c.dw[10] = cns;
        c
    }
    /// Set features `fid` to `value`.
    pub fn set_features(fid: u32, value: u32) -> Command {
        let mut c = Command::new(admin::SET_FEATURES, 0);
        c.dw[10] = fid;
        c.dw[11] = value;
        c
    }
    /// Get features `fid` (current value) for namespace `nsid`.
    pub fn get_features(fid: u32, nsid: u32) -> Command {
        let mut c = Command::new(admin::GET_FEATURES, nsid);
        c.dw[10] = fid;
        c
    }
    /// Create I/O completion queue `qid` of `entries` at `phys`, interrupt `vector` if `irq`.
    pub fn create_cq(qid: u16, entries: u16, phys: u64, vector: u16, irq: bool) -> Command {
        let mut c = Command::new(admin::CREATE_CQ, 0);
        c.set_data(DataPtr::Prp(phys, 0));
        c.dw[10] = (entries as u32 - 1) << 16 | qid as u32;
        c.dw[11] = (vector as u32) << 16 | (irq as u32) << 1 | 1;
        c
    }
    /// Create I/O submission queue `qid` of `entries` at `phys`, completing on `cqid`.
    pub fn create_sq(qid: u16, entries: u16, phys: u64, cqid: u16) -> Command {
        let mut c = Command::new(admin::CREATE_SQ, 0);
        c.set_data(DataPtr::Prp(phys, 0));
        c.dw[10] = (entries as u32 - 1) << 16 | qid as u32;
        c.dw[11] = (cqid as u32) << 16 | 1;
        c
    }
    /// Delete I/O submission queue `qid`.
    pub fn delete_sq(qid: u16) -> Command {
        let mut c = Command::new(admin::DELETE_SQ, 0);
        c.dw[10] = qid as u32;
        c
    }
    /// Delete I/O completion queue `qid` (its submission queues must be gone).
    pub fn delete_cq(qid: u16) -> Command {
        let mut c = Command::new(admin::DELETE_CQ, 0);
        c.dw[10] = qid as u32;
        c
    }
    /// Abort command `cid` on submission queue `sqid`.
    pub fn abort(sqid: u16, cid: u16) -> Command {
        let mut c = Command::new(admin::ABORT, 0);
        c.dw[10] = (cid as u32) << 16 | sqid as u32;
        c
    }
    /// Writes the entry at byte `off` of `buf`.
    pub fn write_to(&self, buf: &DmaBuf, off: usize) {
        // Eight 64-bit stores (little endian: the lower dword first).
        for (i, d) in self.dw.chunks_exact(2).enumerate() {
            buf.write64(off + 8 * i, d[0] as u64 | (d[1] as u64) << 32);
        }
    }
    /// Reads an entry back from byte `off` of `buf`.
    pub fn read_from(buf: &DmaBuf, off: usize) -> Command {
        let mut dw = [0u32; 16];
        for (i, d) in dw.iter_mut().enumerate() {
            *d = buf.read32(off + 4 * i);
        }
        Command { dw }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let mut c = Command::rw(nvm::WRITE, 1, 0x1_2345_6789, 8, true);
        c.set_cid(0x1234);
        c.set_data(DataPtr::Prp(0x1000, 0x2000));
        assert_eq!(c.dw[0], 0x1234_0001);
        assert_eq!(c.dw[1], 1);
        assert_eq!((c.dw[10], c.dw[11]), (0x2345_6789, 1));
        assert_eq!(c.dw[12], 7 | 1 << 30);
        assert_eq!((c.dw[6], c.dw[8]), (0x1000, 0x2000));
        c.set_data(DataPtr::Sgl(0x3000, 512, 0x30));
        assert_eq!(c.dw[0] >> 14 & 3, 1);
        assert_eq!(c.dw[9], 0x30 << 24);
        assert_eq!(c.cid(), 0x1234);
        let q = Command::create_cq(1, 256, 0x5000, 0, true);
        assert_eq!(q.dw[10], 255 << 16 | 1);
        assert_eq!(q.dw[11], 3);
        let d = Command::delete_sq(1);
        assert_eq!((d.dw[0] & 0xff, d.dw[10]), (0, 1));
        let d = Command::delete_cq(1);
        assert_eq!((d.dw[0] & 0xff, d.dw[10]), (4, 1));
    }
}
