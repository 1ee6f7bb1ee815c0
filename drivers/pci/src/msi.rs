//! Message-signalled interrupts: MSI (in configuration space) and MSI-X (a table in a BAR).

use hal::{Mmio, MmioMapper, MsiMessage};

use crate::PciError;
use crate::config::{self, Bdf, ConfigAccess, ConfigSpace};
use crate::function::PciFunction;
use crate::regs::{
    CMD_INTX_DISABLE, MSI_ADDR_HI, MSI_ADDR_LO, MSI_CTRL_64BIT, MSI_CTRL_ENABLE,
    MSI_CTRL_MMC_SHIFT, MSI_CTRL_MME_MASK, MSI_CTRL_PER_VECTOR_MASK, MSI_DATA_32, MSI_DATA_64,
    MSI_MASK_32, MSI_MASK_64, MSI_PENDING_32, MSI_PENDING_64, MSIX_BIR_MASK, MSIX_CTRL_ENABLE,
    MSIX_CTRL_FUNCTION_MASK, MSIX_CTRL_TABLE_SIZE, MSIX_ENTRY_ADDR_HI, MSIX_ENTRY_ADDR_LO,
    MSIX_ENTRY_CTRL, MSIX_ENTRY_DATA, MSIX_ENTRY_MASKED, MSIX_ENTRY_SIZE, MSIX_PBA, MSIX_TABLE,
};

/// What a function's MSI capability supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiInfo {
    /// Offset of the capability.
    pub offset: u8,
    /// Takes a 64-bit message address.
    pub addr64: bool,
    /// Has mask and pending bits per vector.
    pub per_vector_masking: bool,
    /// Vectors the function could use (1, 2, 4 .. 32); this crate enables one.
    pub max_vectors: u8,
    /// Currently enabled.
    pub enabled: bool,
}

impl MsiInfo {
    fn data_offset(&self) -> u16 {
        u16::from(self.offset)
            + if self.addr64 {
                MSI_DATA_64
            } else {
                MSI_DATA_32
            }
    }

    fn mask_offset(&self) -> u16 {
        u16::from(self.offset)
            + if self.addr64 {
                MSI_MASK_64
            } else {
                MSI_MASK_32
            }
    }

    fn pending_offset(&self) -> u16 {
        u16::from(self.offset)
            + if self.addr64 {
                MSI_PENDING_64
            } else {
                MSI_PENDING_32
            }
    }
}

/// Writes an MSI or MSI-X control register (the upper half of the capability's first dword).
fn write_control<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf, cap: u8, value: u16) {
    config::write_upper16(cfg, bdf, u16::from(cap), value);
}

fn read_control<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf, cap: u8) -> u16 {
    cfg.read16(bdf, u16::from(cap) + 2)
}

impl<C: ConfigAccess + ?Sized> PciFunction<'_, C> {
    /// The MSI capability's features, `None` without one.
    pub fn msi_info(&self) -> Option<MsiInfo> {
        let offset = self.msi_offset()?;
        let ctrl = read_control(self.cfg, self.bdf, offset);
        Some(MsiInfo {
            offset,
            addr64: ctrl & MSI_CTRL_64BIT != 0,
            per_vector_masking: ctrl & MSI_CTRL_PER_VECTOR_MASK != 0,
            max_vectors: 1 << ((ctrl >> MSI_CTRL_MMC_SHIFT) & 0b111).min(5),
            enabled: ctrl & MSI_CTRL_ENABLE != 0,
        })
    }

    /// Programs MSI with one vector raising `msg`, unmasks it, enables MSI and turns INTx
    /// off. MSI-X, if enabled, is disabled first (a function uses one or the other).
    ///
    /// Errors: [`PciError::NoCapability`] without MSI; [`PciError::AddressTooWide`] if the
    /// capability is 32-bit and the address is above 4 GiB; [`PciError::DataTooWide`] if the
    /// data needs more than 16 bits.
    pub fn enable_msi(&self, msg: MsiMessage) -> Result<(), PciError> {
        let info = self.msi_info().ok_or(PciError::NoCapability)?;
        if !info.addr64 && msg.address >> 32 != 0 {
            return Err(PciError::AddressTooWide);
        }
        let data = u16::try_from(msg.data).map_err(|_| PciError::DataTooWide)?;
        if let Some(msix) = self.msix_offset() {
            let ctrl = read_control(self.cfg, self.bdf, msix);
            write_control(self.cfg, self.bdf, msix, ctrl & !MSIX_CTRL_ENABLE);
        }
        let (cfg, bdf, cap) = (self.cfg, self.bdf, u16::from(info.offset));
        let ctrl = read_control(cfg, bdf, info.offset) & !(MSI_CTRL_ENABLE | MSI_CTRL_MME_MASK);
        write_control(cfg, bdf, info.offset, ctrl);
        cfg.write32(bdf, cap + MSI_ADDR_LO, msg.address as u32);
        if info.addr64 {
            cfg.write32(bdf, cap + MSI_ADDR_HI, (msg.address >> 32) as u32);
        }
        // The upper half is reserved (or extended data, left disabled): zeros.
        cfg.write32(bdf, info.data_offset(), u32::from(data));
        if info.per_vector_masking {
            let mask = cfg.read32(bdf, info.mask_offset());
            cfg.write32(bdf, info.mask_offset(), mask & !1);
        }
        write_control(cfg, bdf, info.offset, ctrl | MSI_CTRL_ENABLE);
        config::update_command(cfg, bdf, CMD_INTX_DISABLE, 0);
        Ok(())
    }

    /// Turns MSI off (INTx stays off; see [`enable_intx`](Self::enable_intx)).
    pub fn disable_msi(&self) -> Result<(), PciError> {
        let offset = self.msi_offset().ok_or(PciError::NoCapability)?;
        let ctrl = read_control(self.cfg, self.bdf, offset);
        write_control(self.cfg, self.bdf, offset, ctrl & !MSI_CTRL_ENABLE);
        Ok(())
    }

    /// Masks or unmasks MSI vector `vector` (per-vector masking only).
    pub fn set_msi_masked(&self, vector: u8, masked: bool) -> Result<(), PciError> {
        let info = self.msi_info().ok_or(PciError::NoCapability)?;
        if !info.per_vector_masking {
            return Err(PciError::NoCapability);
        }
        if vector >= info.max_vectors {
            return Err(PciError::VectorOutOfRange);
        }
        let mask = self.cfg.read32(self.bdf, info.mask_offset());
        let bit = 1u32 << vector;
        let value = if masked { mask | bit } else { mask & !bit };
        self.cfg.write32(self.bdf, info.mask_offset(), value);
        Ok(())
    }

    /// Whether MSI vector `vector` is pending (per-vector masking only).
    pub fn msi_pending(&self, vector: u8) -> Result<bool, PciError> {
        let info = self.msi_info().ok_or(PciError::NoCapability)?;
        if !info.per_vector_masking {
            return Err(PciError::NoCapability);
        }
        if vector >= info.max_vectors {
            return Err(PciError::VectorOutOfRange);
        }
        Ok(self.cfg.read32(self.bdf, info.pending_offset()) >> vector & 1 != 0)
    }

    /// Number of MSI-X table entries, `None` without MSI-X.
    pub fn msix_table_size(&self) -> Option<u16> {
        let offset = self.msix_offset()?;
        Some((read_control(self.cfg, self.bdf, offset) & MSIX_CTRL_TABLE_SIZE) + 1)
    }

    /// Maps the MSI-X table and pending-bit array through `mapper` and returns a handle on
    /// them. Nothing is enabled yet: program entries with [`MsixTable::set_entry`], unmask
    /// them, then [`MsixTable::enable`].
    ///
    /// Both structures must lie inside memory BARs that enumeration assigned; the mapper is
    /// only asked for those ranges.
    pub fn msix(&self, mapper: &dyn MmioMapper) -> Result<MsixTable<'_, C>, PciError> {
        let cap = self.msix_offset().ok_or(PciError::NoCapability)?;
        let entries = self.msix_table_size().ok_or(PciError::NoCapability)?;
        let table_len = usize::from(entries) * MSIX_ENTRY_SIZE;
        let pba_len = usize::from(entries).div_ceil(64) * 8;
        let table = self.map_msix_part(mapper, u16::from(cap) + MSIX_TABLE, table_len)?;
        let pba = self.map_msix_part(mapper, u16::from(cap) + MSIX_PBA, pba_len)?;
        Ok(MsixTable {
            cfg: self.cfg,
            bdf: self.bdf,
            cap,
            msi: self.msi_offset(),
            entries,
            table,
            pba,
        })
    }

    /// Maps `len` bytes at the BAR and offset that the register at `reg` names.
    fn map_msix_part(
        &self,
        mapper: &dyn MmioMapper,
        reg: u16,
        len: usize,
    ) -> Result<Mmio, PciError> {
        let raw = self.cfg.read32(self.bdf, reg);
        let bir = (raw & MSIX_BIR_MASK) as usize;
        let offset = u64::from(raw & !MSIX_BIR_MASK);
        if bir >= crate::bar::MAX_BARS {
            return Err(PciError::NoSuchBar);
        }
        let bar = self.memory_bar(bir)?;
        match offset.checked_add(len as u64) {
            Some(end) if end <= bar.size => {}
            _ => return Err(PciError::TableOutsideBar),
        }
        mapper
            .map(bar.cpu_addr.add(offset), len)
            .ok_or(PciError::MapFailed)
    }
}

/// A function's MSI-X table and pending-bit array, mapped.
///
/// It borrows only the configuration access, not the [`PciFunction`], so a driver can keep
/// both side by side.
#[derive(Debug)]
pub struct MsixTable<'a, C: ConfigAccess + ?Sized = ConfigSpace> {
    cfg: &'a C,
    bdf: Bdf,
    cap: u8,
    msi: Option<u8>,
    entries: u16,
    table: Mmio,
    pba: Mmio,
}

impl<C: ConfigAccess + ?Sized> MsixTable<'_, C> {
    /// Number of entries.
    pub fn len(&self) -> u16 {
        self.entries
    }

    /// Whether the table has no entries (never, by the spec's encoding).
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    fn entry(&self, index: u16) -> Result<usize, PciError> {
        if index >= self.entries {
            return Err(PciError::VectorOutOfRange);
        }
        Ok(usize::from(index) * MSIX_ENTRY_SIZE)
    }

    /// Points entry `index` at `msg`. An unmasked entry is masked while it changes, so the
    /// device never sends half an update.
    pub fn set_entry(&self, index: u16, msg: MsiMessage) -> Result<(), PciError> {
        let at = self.entry(index)?;
        let ctrl = self.table.read32(at + MSIX_ENTRY_CTRL);
        if ctrl & MSIX_ENTRY_MASKED == 0 {
            self.table
                .write32(at + MSIX_ENTRY_CTRL, ctrl | MSIX_ENTRY_MASKED);
        }
        self.table
            .write32(at + MSIX_ENTRY_ADDR_LO, msg.address as u32);
        self.table
            .write32(at + MSIX_ENTRY_ADDR_HI, (msg.address >> 32) as u32);
        self.table.write32(at + MSIX_ENTRY_DATA, msg.data);
        if ctrl & MSIX_ENTRY_MASKED == 0 {
            self.table.write32(at + MSIX_ENTRY_CTRL, ctrl);
        }
        Ok(())
    }

    /// The message entry `index` holds.
    pub fn entry_message(&self, index: u16) -> Result<MsiMessage, PciError> {
        let at = self.entry(index)?;
        let lo = u64::from(self.table.read32(at + MSIX_ENTRY_ADDR_LO));
        let hi = u64::from(self.table.read32(at + MSIX_ENTRY_ADDR_HI));
        Ok(MsiMessage {
            address: hi << 32 | lo,
            data: self.table.read32(at + MSIX_ENTRY_DATA),
        })
    }

    fn set_masked(&self, index: u16, masked: bool) -> Result<(), PciError> {
        let at = self.entry(index)? + MSIX_ENTRY_CTRL;
        let ctrl = self.table.read32(at);
        let value = if masked {
            ctrl | MSIX_ENTRY_MASKED
        } else {
            ctrl & !MSIX_ENTRY_MASKED
        };
        self.table.write32(at, value);
        Ok(())
    }

    /// Masks entry `index`.
    pub fn mask(&self, index: u16) -> Result<(), PciError> {
        self.set_masked(index, true)
    }

    /// Unmasks entry `index`.
    pub fn unmask(&self, index: u16) -> Result<(), PciError> {
        self.set_masked(index, false)
    }

    /// Whether entry `index` is masked.
    pub fn is_masked(&self, index: u16) -> Result<bool, PciError> {
        let at = self.entry(index)? + MSIX_ENTRY_CTRL;
        Ok(self.table.read32(at) & MSIX_ENTRY_MASKED != 0)
    }

    /// Whether entry `index` has a message pending (raised while masked).
    pub fn is_pending(&self, index: u16) -> Result<bool, PciError> {
        self.entry(index)?;
        let word = self.pba.read64(usize::from(index / 64) * 8);
        Ok(word >> (index % 64) & 1 != 0)
    }

    fn control(&self) -> u16 {
        read_control(self.cfg, self.bdf, self.cap)
    }

    /// Enables MSI-X with the function mask clear, after turning MSI and INTx off.
    pub fn enable(&self) {
        let (cfg, bdf) = (self.cfg, self.bdf);
        if let Some(msi) = self.msi {
            let ctrl = read_control(cfg, bdf, msi);
            write_control(cfg, bdf, msi, ctrl & !MSI_CTRL_ENABLE);
        }
        config::update_command(cfg, bdf, CMD_INTX_DISABLE, 0);
        let ctrl = self.control() & !MSIX_CTRL_FUNCTION_MASK;
        write_control(cfg, bdf, self.cap, ctrl | MSIX_CTRL_ENABLE);
    }

    /// Disables MSI-X.
    pub fn disable(&self) {
        write_control(
            self.cfg,
            self.bdf,
            self.cap,
            self.control() & !MSIX_CTRL_ENABLE,
        );
    }

    /// Sets or clears the function mask, which holds back every vector at once.
    pub fn set_function_mask(&self, masked: bool) {
        let ctrl = self.control();
        let value = if masked {
            ctrl | MSIX_CTRL_FUNCTION_MASK
        } else {
            ctrl & !MSIX_CTRL_FUNCTION_MASK
        };
        write_control(self.cfg, self.bdf, self.cap, value);
    }

    /// Whether MSI-X is enabled.
    pub fn is_enabled(&self) -> bool {
        self.control() & MSIX_CTRL_ENABLE != 0
    }
}
