//! Bring-up: BIOS/OS handoff and HBA reset ([`Hba`]), what each port has ([`PortStatus`]),
//! port start and stop, COMRESET, the internal command (slot 0, polled) and IDENTIFY DEVICE.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use blk::QueueLimits;
use blk::driver::CompletionSink;
use hal::{DmaBuf, Mmio, PhysAddr};
use spin::Mutex;

use super::{
    Ahci, CL_OFF, DeviceInfo, INTERNAL_TABLE, Inner, MEM_BYTES, Mode, RFIS_OFF, SCRATCH_OFF,
    SlotCmd, Tracker, spin_until,
};
use crate::InitError;
use crate::cmd::{H2dFis, SLOTS, header_dw0};
use crate::regs::{Bohc, Cap, Cap2, Ghc, PxCmd, PxIs, Serr, Tfd, hba, port as px, sctl, sig, ssts};
use crate::sg::{Prd, write_prdt};
use crate::spec::{IdentifyInfo, ata, ata_error, words};
use crate::stats::DriverStats;

/// What a port of the HBA has behind it, from `PxSSTS.DET` and `PxSIG` after the HBA reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortStatus {
    /// Not in `PI`, or beyond the register window.
    NotImplemented,
    /// No device detected (`DET` = 0).
    NoDevice,
    /// A device but no PHY communication, or the PHY offline (`DET`, not 3).
    LinkDown(u8),
    /// An ATAPI device (CD/DVD): not a disk this driver serves.
    Atapi,
    /// A port multiplier: not supported.
    PortMultiplier,
    /// Another signature (enclosure bridge, unknown): not a disk this driver serves.
    Other(u32),
    /// A SATA disk (ATA signature, or none received yet): bring it up with [`Ahci::on_port`].
    Disk,
}

/// An AHCI host bus adapter taken from the firmware and reset, with AHCI mode on: what it
/// offers and what is on its ports. Each port with a disk is then brought up on its own
/// ([`Ahci::on_port`]).
pub struct Hba {
    abar: Mmio,
    cap: Cap,
    pi: u32,
    version: u32,
    bios_handoff: bool,
    /// Ports the register window covers (at most 32).
    nports: usize,
}

impl Hba {
    /// BIOS/OS handoff when offered, HBA reset, AHCI mode. Fewer than 32 command slots is
    /// refused.
    pub fn new(abar: Mmio) -> Result<Hba, InitError> {
        if abar.len() < hba::PORT_BASE + hba::PORT_STRIDE {
            return Err(InitError::Controller);
        }
        // BIOS/OS handoff when offered.
        let mut bios_handoff = false;
        if Cap2::from_bits_retain(abar.read32(hba::CAP2)).contains(Cap2::BOH) {
            let bohc = || Bohc::from_bits_retain(abar.read32(hba::BOHC));
            let b = bohc();
            bios_handoff = b.contains(Bohc::BOS);
            abar.write32(hba::BOHC, (b | Bohc::OOS).bits());
            spin_until(|| !bohc().contains(Bohc::BOS));
            spin_until(|| !bohc().contains(Bohc::BB));
        }
        // AHCI mode, HBA reset (firmware may have left ports running), AHCI mode again.
        abar.write32(hba::GHC, Ghc::AE.bits());
        abar.write32(hba::GHC, (Ghc::AE | Ghc::HR).bits());
        if !spin_until(|| !Ghc::from_bits_retain(abar.read32(hba::GHC)).contains(Ghc::HR)) {
            return Err(InitError::Controller);
        }
        abar.write32(hba::GHC, Ghc::AE.bits());
        let cap = Cap::from_bits_retain(abar.read32(hba::CAP));
        if cap.command_slots() < SLOTS as u32 {
            return Err(InitError::TooFewSlots);
        }
        let pi = abar.read32(hba::PI);
        let version = abar.read32(hba::VS);
        let nports = ((abar.len() - hba::PORT_BASE) / hba::PORT_STRIDE).min(32);
        Ok(Hba {
            abar,
            cap,
            pi,
            version,
            bios_handoff,
            nports,
        })
    }

    /// `CAP`.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// `PI`: ports implemented.
    pub fn ports_implemented(&self) -> u32 {
        self.pi
    }

    /// What is on `port`.
    pub fn port_status(&self, port: usize) -> PortStatus {
        if port >= self.nports || self.pi & (1 << port) == 0 {
            return PortStatus::NotImplemented;
        }
        let base = hba::PORT_BASE + port * hba::PORT_STRIDE;
        let det = self.abar.read32(base + px::SSTS) & ssts::DET_MASK;
        if det == 0 {
            return PortStatus::NoDevice;
        }
        if det != ssts::DET_PRESENT {
            return PortStatus::LinkDown(det as u8);
        }
        match self.abar.read32(base + px::SIG) {
            sig::ATA | sig::NONE => PortStatus::Disk,
            sig::ATAPI => PortStatus::Atapi,
            sig::PORT_MULTIPLIER => PortStatus::PortMultiplier,
            s => PortStatus::Other(s),
        }
    }

    /// Ports with a disk (`PortStatus::Disk`), one bit each.
    pub fn disk_ports(&self) -> u32 {
        (0..self.nports)
            .filter(|&p| self.port_status(p) == PortStatus::Disk)
            .fold(0, |m, p| m | 1 << p)
    }

    /// `IS`: ports with an interrupt pending, one bit each (a dispatcher for an interrupt line
    /// that several ports share reads it and calls the handlers of those ports).
    pub fn pending(&self) -> u32 {
        self.abar.read32(hba::IS)
    }

    /// Another handle on the registers.
    fn abar(&self) -> Result<Mmio, InitError> {
        self.abar
            .subregion(0, self.abar.len())
            .ok_or(InitError::Controller)
    }
}

impl Ahci {
    /// Brings up the HBA behind `abar` (BAR5) and the disk on its first port with one; a
    /// controller with several disks is brought up with [`Hba::new`] and [`Ahci::on_port`]
    /// for each.
    pub fn new(abar: Mmio, mode: Mode) -> Result<Ahci, InitError> {
        let hba = Hba::new(abar)?;
        let ports = hba.disk_ports();
        if ports == 0 {
            return Err(InitError::NoDevice);
        }
        Ahci::on_port(&hba, ports.trailing_zeros() as usize, mode)
    }

    /// Brings up the disk on `port` of `hba`: its own command memory, port start, IDENTIFY
    /// DEVICE. `InitError::NoDevice` when the port has no disk ([`Hba::port_status`]).
    pub fn on_port(hba: &Hba, port: usize, mode: Mode) -> Result<Ahci, InitError> {
        if hba.port_status(port) != PortStatus::Disk {
            return Err(InitError::NoDevice);
        }
        let abar = hba.abar()?;
        let cap_v = hba.cap;
        let pi = hba.pi;
        let bios_handoff = hba.bios_handoff;
        let addr64 = cap_v.contains(Cap::S64A);
        let mem = DmaBuf::alloc(MEM_BYTES, 4096).map_err(|_| InitError::NoMemory)?;
        if !addr64 && mem.phys().0 + MEM_BYTES as u64 > 1 << 32 {
            return Err(InitError::NoMemory);
        }
        let placeholder = IdentifyInfo {
            blocks: 0,
            logical_sector_size: 512,
            physical_sector_size: 512,
            lba48: false,
            ncq: false,
            ncq_depth: 1,
            write_cache: false,
            write_cache_enabled: false,
            fua: false,
            trim: false,
            trim_max_blocks: 0,
            model: [b' '; 40],
            serial: [b' '; 20],
            media_status: false,
        };
        let pregs = abar
            .subregion(hba::PORT_BASE + port * hba::PORT_STRIDE, hba::PORT_STRIDE)
            .ok_or(InitError::Controller)?;
        let mut ahci = Ahci {
            abar,
            pregs,
            port,
            mem,
            info: DeviceInfo {
                port: port as u8,
                identify: placeholder,
                cap: cap_v,
                version: 0,
                ports_implemented: pi,
                addr64,
                ncq: false,
                ncq_depth: 1,
                bios_handoff,
                write_protected: false,
            },
            limits: QueueLimits::new(),
            lbs_shift: 9,
            mode,
            inner: Mutex::new(Inner {
                tracker: Tracker::new(),
                cmds: [SlotCmd::EMPTY; SLOTS],
                pt: 0,
                loaded: 0,
                err_is: PxIs::empty(),
                err_tfd: Tfd::empty(),
                err_serr: Serr::empty(),
                refuse: 0,
            }),
            queue: CompletionSink::new(),
            unissued: AtomicBool::new(false),
            owner: spin::Once::new(),
            pending_is: AtomicU32::new(0),
            reap_pending: AtomicBool::new(false),
            recovery_pending: AtomicBool::new(false),
            ro_done: AtomicU32::new(0),
            stats: DriverStats::new(),
        };
        ahci.info.version = hba.version;
        if !ahci.port_start() {
            return Err(InitError::PortStart);
        }
        let scratch = ahci.mem.phys().add(SCRATCH_OFF as u64);
        ahci.exec_internal(
            H2dFis::simple(ata::IDENTIFY_DEVICE),
            Some((scratch, 512)),
            false,
        )
        .map_err(InitError::Identify)?;
        let mut bytes = [0u8; 512];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = ahci.mem.read8(SCRATCH_OFF + i);
        }
        let id = IdentifyInfo::parse(&words(&bytes)).map_err(InitError::BadIdentify)?;
        ahci.info.identify = id;
        ahci.info.ncq = cap_v.contains(Cap::SNCQ) && id.ncq && id.lba48;
        ahci.info.ncq_depth = if ahci.info.ncq { id.ncq_depth } else { 0 };
        ahci.limits = ahci.info.queue_limits();
        ahci.limits
            .validate()
            .map_err(|_| InitError::BadIdentify(crate::spec::IdentifyError::BadSectorSize))?;
        // A power of two (checked by `validate`).
        ahci.lbs_shift = id.logical_sector_size.trailing_zeros();
        if id.media_status {
            // Removable media: GET MEDIA STATUS fails with WP when it is write-protected (or
            // with NM, MC, MCR, ABRT: none of them stop the bring-up). An error stops the
            // port, which starts again.
            if let Err(tfd) = ahci.exec_internal(H2dFis::simple(ata::GET_MEDIA_STATUS), None, false)
            {
                let t = Tfd::from_bits_retain(tfd);
                if t.contains(Tfd::ERR) && t.error() & ata_error::WP != 0 {
                    ahci.info.write_protected = true;
                    ahci.inner.get_mut().refuse |= super::READ_ONLY;
                }
                if !ahci.port_start() {
                    return Err(InitError::PortStart);
                }
            }
        }
        if mode == Mode::Interrupt {
            ahci.abar.write32(hba::GHC, (Ghc::AE | Ghc::IE).bits());
        }
        Ok(ahci)
    }

    /// Stops the command engine and FIS receive (AHCI 10.1.2).
    pub(super) fn port_stop(&self) -> bool {
        let c = self.pcmd();
        self.pwrite(px::CMD, (c & !PxCmd::ST).bits());
        let a = spin_until(|| !self.pcmd().contains(PxCmd::CR));
        let c = self.pcmd();
        self.pwrite(px::CMD, (c & !PxCmd::FRE).bits());
        let b = spin_until(|| !self.pcmd().contains(PxCmd::FR));
        a && b
    }

    /// Points the port at its memory, enables FIS receive, clears errors, starts the engine.
    pub(super) fn port_start(&self) -> bool {
        if !self.port_stop() {
            return false;
        }
        let base = self.mem.phys().0;
        let cl = base + CL_OFF as u64;
        let fb = base + RFIS_OFF as u64;
        self.pwrite(px::CLB, cl as u32);
        self.pwrite(px::CLBU, (cl >> 32) as u32);
        self.pwrite(px::FB, fb as u32);
        self.pwrite(px::FBU, (fb >> 32) as u32);
        let c = self.pcmd();
        self.pwrite(px::CMD, (c | PxCmd::FRE | PxCmd::SUD | PxCmd::POD).bits());
        self.pwrite(px::SERR, !0);
        if !spin_until(|| !self.tfd().intersects(Tfd::BSY | Tfd::DRQ)) {
            return false;
        }
        self.pwrite(px::IS, !0);
        self.pwrite(
            px::IE,
            if self.mode == Mode::Interrupt {
                PxIs::ENABLED.bits()
            } else {
                0
            },
        );
        let c = self.pcmd();
        self.pwrite(px::CMD, (c | PxCmd::ST).bits());
        true
    }

    /// COMRESET and start again.
    pub(super) fn port_reset(&self) -> bool {
        self.stats.port_resets.fetch_add(1, Ordering::Relaxed);
        self.port_stop();
        let s = self.pread(px::SCTL) & !sctl::DET_MASK;
        self.pwrite(px::SCTL, s | sctl::DET_COMRESET);
        // At least 1 ms of COMRESET on real links.
        for _ in 0..10_000 {
            let _ = self.pread(px::SSTS);
        }
        self.pwrite(px::SCTL, s);
        let up = spin_until(|| self.pread(px::SSTS) & ssts::DET_MASK == ssts::DET_PRESENT);
        self.pwrite(px::SERR, !0);
        up && self.port_start()
    }

    /// Runs one command in slot 0 with the internal table and waits for it (port idle only:
    /// bring-up and recovery). Errors give `PxTFD`.
    pub(super) fn exec_internal(
        &self,
        fis: H2dFis,
        data: Option<(PhysAddr, u32)>,
        write: bool,
    ) -> Result<(), u32> {
        let mut n = 0;
        if let Some((a, len)) = data {
            write_prdt(
                &self.mem,
                INTERNAL_TABLE,
                &[Prd {
                    dba: a.0,
                    bytes: len,
                }],
            );
            n = 1;
        }
        self.write_cfis(INTERNAL_TABLE, &fis);
        self.write_header(0, header_dw0(write, n), INTERNAL_TABLE);
        self.pwrite(px::IS, !0);
        self.pwrite(px::CI, 1);
        let ok = spin_until(|| self.pread(px::CI) & 1 == 0 || self.pis().intersects(PxIs::ERRORS));
        let t = self.tfd();
        let failed = !ok || self.pis().intersects(PxIs::ERRORS) || t.contains(Tfd::ERR);
        self.pwrite(px::IS, !0);
        if failed { Err(t.bits()) } else { Ok(()) }
    }
}
