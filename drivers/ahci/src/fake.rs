//! A fake HBA for host tests: one SATA disk on port 0, in lock-step with the driver.
//!
//! The ABAR registers are host memory (a page of the DMA test region) that the driver reaches
//! through an ordinary `hal::Mmio`. The device model runs in [`FakeHba::step`]: the tests call
//! it after each driver entry point, and the driver's register waits (`spin_until`) call it
//! through [`tick`] while it waits. A step sees what the driver wrote since the last step by
//! comparing each register with what the device last put there, so it models
//! write-1-to-clear (`PxIS`, `PxSERR`: a write of `!0`, or of bits that differ from the
//! device's) and write-1-to-set (`PxSACT`, `PxCI`: the new bits) registers; a write of exactly
//! the value the device put there looks like no write, so bits the interrupt handler
//! acknowledges stay visible until the next `!0` write (they are status, not events: the
//! interrupt is an edge, [`FakeHba::take_irq`]).
//!
//! Commands are read from DMA memory as a device would (command list at `PxCLB`, command table
//! at CTBA, CFIS, PRDT); on the host a buffer's "physical" address is its pointer, and one
//! `Mmio` over the whole DMA test region gives the model bounds-checked access to it. The disk
//! is a `Vec<u8>`. Faults: a task-file error, an interface error, or a command that never
//! completes, on the next command that matches.

use std::cell::RefCell;
use std::sync::OnceLock;

use hal::dma::host::{TEST_REGION_BYTES, init_test_region};
use hal::{DmaBuf, Mmio, PhysAddr};

use crate::regs::{Cap, Ghc, PxCmd, PxIs, Serr, Tfd, hba, port as px};
use crate::spec::{ata, ata_error, sense};

/// The whole DMA test region as one window, and its base.
static REGION: OnceLock<(usize, Mmio)> = OnceLock::new();

/// Sets up the DMA test region (`hal::dma::host::init_test_region`) and the model's window on
/// it. Every test that allocates DMA memory calls this first.
pub fn dma_init() {
    REGION.get_or_init(|| {
        init_test_region();
        // Nothing has been allocated yet (every test comes here first and `get_or_init`
        // runs this once), so the whole region is free and this is its base.
        let probe = DmaBuf::alloc(TEST_REGION_BYTES, hal::dma::PAGE_SIZE)
            .expect("the DMA test region is used before fake::dma_init");
        let base = probe.virt();
        assert_eq!(base as u64, probe.phys().0, "host DMA is identity mapped");
        drop(probe);
        // SAFETY: 1. `base..base + TEST_REGION_BYTES` is the DMA test region: leaked host
        // memory, mapped read-write for the rest of the process, which tolerates volatile
        // accesses of every size at aligned offsets; 2. the other handles on it are `DmaBuf`s
        // and `Mmio` subregions of this window, all volatile, used by one test thread at a
        // time each (every test has its own buffers and its own fake).
        #[allow(unsafe_code)]
        let m = unsafe { Mmio::new(base, PhysAddr(base as u64), TEST_REGION_BYTES) };
        (base, m)
    });
}

fn region() -> &'static (usize, Mmio) {
    dma_init();
    REGION.get().expect("initialised above")
}

/// A window on `len` bytes of DMA memory at "physical" address `phys` (panics outside the
/// test region: a wild address from the driver).
fn dma(phys: u64, len: usize) -> Mmio {
    let (base, m) = region();
    let off = (phys as usize)
        .checked_sub(*base)
        .expect("device access below the DMA region");
    m.subregion(off, len)
        .expect("device access outside the DMA region")
}

/// What goes wrong, on the next command that [`Fault::matches`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The device fails the command (ATA ERR, error UNC; for NCQ in the Set Device Bits FIS,
    /// the tag left in `PxSACT`), `PxIS.TFES`. The port processes nothing more until stopped.
    TaskFile,
    /// An interface fatal error (`PxIS.IFS`, `PxSERR`): the command does not finish.
    Interface,
    /// The command never completes (no FIS, no interrupt); others go on.
    Hang,
}

/// Hostile behaviour for fuzzing ([`FakeHba::set_chaos`]): odds per mille, per device step
/// (`spurious_is`, `error_is`, `noise`, `tfd`, `rfis`) or per command taken (`short`,
/// `task_file`, `interface`, `hang`), drawn from a xorshift generator seeded by `seed`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Chaos {
    /// Generator seed (not 0).
    pub seed: u64,
    /// Non-error PxIS bits (DHRS, SDBS, PSS) and an interrupt with nothing done.
    pub spurious_is: u16,
    /// An error bit in PxIS (TFES with ERR in PxTFD, IFS, HBFS, HBDS, INFS or OFS) with no
    /// command to blame; the port stops processing until the engine is stopped.
    pub error_is: u16,
    /// PxSACT/PxCI bits shown set for slots the device does not hold (never issued, or
    /// finished and shown again).
    pub noise: u16,
    /// A random PxTFD (BSY and the error register's WP bit clear).
    pub tfd: u16,
    /// Random bytes over the received-FIS area (D2H, SDB, PIO setup FIS garbage).
    pub rfis: u16,
    /// A non-queued read or write moves fewer bytes than asked (possibly none) and reports
    /// success with the short count in PRDBC.
    pub short: u16,
    /// The command fails with a task-file error.
    pub task_file: u16,
    /// An interface error on the command.
    pub interface: u16,
    /// The command never completes.
    pub hang: u16,
}

/// Write-protected media: how the fake fails every write (WRITE DMA EXT, WRITE FPDMA QUEUED,
/// TRIM) while it is set ([`FakeHba::set_write_protect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteProtect {
    /// The error register's WP bit (with ABRT), in `PxTFD` and in the NCQ log.
    WpBit,
    /// ABRT only; the NCQ log carries sense DATA PROTECT / WRITE PROTECTED (NCQ autosense).
    Sense,
}

/// A fault on commands of `opcode` (any when `None`) touching `lba` (any when `None`),
/// `times` times.
#[derive(Clone, Copy, Debug)]
pub struct Fault {
    /// ATA command byte.
    pub opcode: Option<u8>,
    /// A logical block the command covers.
    pub lba: Option<u64>,
    /// What happens.
    pub kind: FaultKind,
    /// How many matching commands it hits.
    pub times: u32,
}

impl Fault {
    fn matches(&self, c: &Executed) -> bool {
        self.times > 0
            && self.opcode.is_none_or(|o| o == c.opcode)
            && self
                .lba
                .is_none_or(|l| c.blocks > 0 && (c.lba..c.lba + c.blocks as u64).contains(&l))
    }
}

/// A command the device took from the command list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Executed {
    /// Command slot.
    pub slot: u8,
    /// ATA command byte.
    pub opcode: u8,
    /// LBA.
    pub lba: u64,
    /// Blocks (0 for commands without data blocks).
    pub blocks: u32,
    /// NCQ tag (FPDMA commands).
    pub tag: Option<u8>,
    /// PRDT entries.
    pub prds: u16,
    /// What became of it.
    pub fault: Option<FaultKind>,
}

struct State {
    /// What the device last put in PxIS, PxSERR, PxSACT, PxCI, PxTFD.
    is: u32,
    serr: u32,
    sact: u32,
    ci: u32,
    tfd: u32,
    /// Slots issued and not yet run.
    accepted: u32,
    /// An error stopped command processing until the engine is stopped.
    halted: bool,
    /// Commands are taken but not run until [`FakeHba::release`].
    hold: bool,
    /// An interrupt edge not yet taken.
    irq: bool,
    /// The failed NCQ tag, its error register and sense (key, ASC, ASCQ), for the NCQ
    /// command error log.
    ncq_error: Option<(u8, u8, [u8; 3], u64)>,
    /// Writes fail as on write-protected media.
    write_protect: Option<WriteProtect>,
    /// Hostile behaviour, and its generator state.
    chaos: Option<Chaos>,
    rng: u64,
    /// PxSACT and PxCI as last shown (with noise), to tell the driver's writes.
    shown_sact: u32,
    shown_ci: u32,
    /// Non-queued reads and writes completed short on purpose.
    shorted: u32,
    /// READ LOG EXT page 10h implemented (QEMU 7.2 does not).
    ncq_log: bool,
    faults: Vec<Fault>,
    log: Vec<Executed>,
    disk: Vec<u8>,
    identify: [u16; 256],
    /// Engine starts seen (`PxCMD.ST` 0 → 1).
    starts: u32,
    /// HBA resets seen.
    hba_resets: u32,
}

/// The device model. See the module documentation.
pub struct FakeHba {
    /// The page of the DMA region holding the registers (kept allocated).
    _abar_mem: DmaBuf,
    abar: Mmio,
    port: Mmio,
    st: RefCell<State>,
}

/// The next xorshift64 value.
pub fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// True with `per_mille` odds out of 1000.
fn roll(x: &mut u64, per_mille: u16) -> bool {
    per_mille != 0 && xorshift(x) % 1000 < per_mille as u64
}

/// Logical blocks of the fake disk (512 bytes each).
pub const BLOCKS: u64 = 8192;

thread_local! {
    static CURRENT: RefCell<Option<&'static FakeHba>> = const { RefCell::new(None) };
}

/// Runs one step of this thread's fake HBA (the driver's register waits call it).
pub fn tick() {
    if let Some(f) = CURRENT.with(|c| *c.borrow()) {
        f.step();
    }
}

impl FakeHba {
    /// A fake HBA (32 slots, NCQ, 64-bit) with a QEMU-like disk of [`BLOCKS`] blocks on port
    /// 0, made this thread's device for [`tick`]. The driver gets [`FakeHba::abar`].
    pub fn new() -> &'static FakeHba {
        dma_init();
        let mem = DmaBuf::alloc(hba::ABAR_LEN, hal::dma::PAGE_SIZE).expect("ABAR memory");
        let abar = dma(mem.phys().0, hba::ABAR_LEN);
        let port = abar
            .subregion(hba::PORT_BASE, hba::PORT_STRIDE)
            .expect("port 0");
        let mut identify = crate::spec::tests_support::qemu_words();
        identify[100] = BLOCKS as u16;
        identify[101] = (BLOCKS >> 16) as u16;
        identify[102] = 0;
        identify[103] = 0;
        let f: &'static FakeHba = Box::leak(Box::new(FakeHba {
            _abar_mem: mem,
            abar,
            port,
            st: RefCell::new(State {
                is: 0,
                serr: 0,
                sact: 0,
                ci: 0,
                tfd: Tfd::DRDY.bits(),
                accepted: 0,
                halted: false,
                hold: false,
                irq: false,
                ncq_error: None,
                write_protect: None,
                chaos: None,
                rng: 1,
                shown_sact: 0,
                shown_ci: 0,
                shorted: 0,
                ncq_log: true,
                faults: Vec::new(),
                log: Vec::new(),
                disk: vec![0; (BLOCKS * 512) as usize],
                identify,
                starts: 0,
                hba_resets: 0,
            }),
        }));
        // NP = 0 (one port), NCS = 31 (32 slots).
        let cap = Cap::SNCQ | Cap::S64A | Cap::from_bits_retain(31 << 8);
        f.abar.write32(hba::CAP, cap.bits());
        f.abar.write32(hba::PI, 1);
        f.abar.write32(hba::VS, 0x0001_0300);
        f.abar.write32(hba::CAP2, 0);
        f.port.write32(px::SSTS, 0x123); // DET = 3: device present, PHY up
        f.port.write32(px::SIG, crate::regs::sig::ATA);
        f.publish(&mut f.st.borrow_mut());
        CURRENT.with(|c| *c.borrow_mut() = Some(f));
        f
    }

    /// A handle on the registers for the driver.
    pub fn abar(&self) -> Mmio {
        self.abar
            .subregion(0, hba::ABAR_LEN)
            .expect("the whole window")
    }

    /// Adds a fault.
    pub fn inject(&self, f: Fault) {
        self.st.borrow_mut().faults.push(f);
    }

    /// Whether READ LOG EXT page 10h works (else it is aborted, as QEMU does).
    pub fn set_ncq_log(&self, on: bool) {
        self.st.borrow_mut().ncq_log = on;
    }

    /// Sets IDENTIFY DEVICE word `i` (before the driver's bring-up reads it).
    pub fn set_identify_word(&self, i: usize, v: u16) {
        self.st.borrow_mut().identify[i] = v;
    }

    /// Hostile behaviour from now on (`None`: a well-behaved device).
    pub fn set_chaos(&self, c: Option<Chaos>) {
        let mut s = self.st.borrow_mut();
        s.rng = c.map_or(1, |c| c.seed | 1);
        s.chaos = c;
    }

    /// Clears the faults not yet hit.
    pub fn clear_faults(&self) {
        self.st.borrow_mut().faults.clear();
    }

    /// Non-queued reads and writes the device completed short on purpose so far.
    pub fn shorted(&self) -> u32 {
        self.st.borrow().shorted
    }

    /// Write-protected media from now on (`None`: writable).
    pub fn set_write_protect(&self, wp: Option<WriteProtect>) {
        self.st.borrow_mut().write_protect = wp;
    }

    /// Holds issued commands (taken, not run) until [`FakeHba::release`].
    pub fn hold(&self) {
        self.st.borrow_mut().hold = true;
    }

    /// Runs the held commands.
    pub fn release(&self) {
        self.st.borrow_mut().hold = false;
        self.step();
    }

    /// Takes the interrupt edge: true when the port posted an enabled status bit with
    /// `GHC.IE` set since the last call.
    pub fn take_irq(&self) -> bool {
        core::mem::take(&mut self.st.borrow_mut().irq)
    }

    /// Commands run so far, in order.
    pub fn log(&self) -> Vec<Executed> {
        self.st.borrow().log.clone()
    }

    /// Disk bytes at `lba`.
    pub fn disk(&self, lba: u64, len: usize) -> Vec<u8> {
        let o = (lba * 512) as usize;
        self.st.borrow().disk[o..o + len].to_vec()
    }

    /// Writes disk bytes at `lba`.
    pub fn set_disk(&self, lba: u64, data: &[u8]) {
        let o = (lba * 512) as usize;
        self.st.borrow_mut().disk[o..o + data.len()].copy_from_slice(data);
    }

    /// (HBA resets, engine starts) seen.
    pub fn resets_and_starts(&self) -> (u32, u32) {
        let s = self.st.borrow();
        (s.hba_resets, s.starts)
    }

    /// Slots the device holds (issued, not finished).
    pub fn outstanding(&self) -> u32 {
        let s = self.st.borrow();
        s.ci | s.sact
    }

    fn publish(&self, s: &mut State) {
        let (mut sact, mut ci) = (s.sact, s.ci);
        if let Some(c) = s.chaos
            && roll(&mut s.rng, c.noise)
        {
            let free = !(s.sact | s.ci);
            sact |= xorshift(&mut s.rng) as u32 & xorshift(&mut s.rng) as u32 & free;
            ci |= xorshift(&mut s.rng) as u32 & xorshift(&mut s.rng) as u32 & free;
        }
        s.shown_sact = sact;
        s.shown_ci = ci;
        self.port.write32(px::IS, s.is);
        self.port.write32(px::SERR, s.serr);
        self.port.write32(px::SACT, sact);
        self.port.write32(px::CI, ci);
        self.port.write32(px::TFD, s.tfd);
    }

    /// The per-step hostile events of [`Chaos`] (the engine running).
    fn chaos_step(&self, s: &mut State) {
        let Some(c) = s.chaos else {
            return;
        };
        if roll(&mut s.rng, c.spurious_is) {
            let bits = [PxIs::DHRS, PxIs::SDBS, PxIs::PSS][xorshift(&mut s.rng) as usize % 3];
            self.post(s, bits);
        }
        if roll(&mut s.rng, c.error_is) {
            let e = [
                PxIs::TFES,
                PxIs::IFS,
                PxIs::HBFS,
                PxIs::HBDS,
                PxIs::INFS,
                PxIs::OFS,
            ][xorshift(&mut s.rng) as usize % 6];
            if e == PxIs::TFES {
                s.tfd = (Tfd::ERR | Tfd::DRDY).bits() | (ata_error::ABRT as u32) << 8;
            } else {
                s.serr |= (Serr::ERR_E | Serr::DIAG_H).bits();
            }
            s.halted = true;
            self.post(s, e);
        }
        if roll(&mut s.rng, c.tfd) {
            // Anything but BSY, and no WP bit in the error byte (write protection is sticky
            // in the driver, which would turn the rest of the run read-only).
            s.tfd = xorshift(&mut s.rng) as u32 & 0xbf7f;
        }
        if roll(&mut s.rng, c.rfis) {
            let fb = self.port.read32(px::FB) as u64 | (self.port.read32(px::FBU) as u64) << 32;
            if fb != 0 {
                let m = dma(fb, 256);
                for i in (0..256).step_by(8) {
                    m.write64(i, xorshift(&mut s.rng));
                }
            }
        }
    }

    fn post(&self, s: &mut State, bits: PxIs) {
        s.is |= bits.bits();
        let ie = PxIs::from_bits_retain(self.port.read32(px::IE));
        let ghc = Ghc::from_bits_retain(self.abar.read32(hba::GHC));
        if ie.intersects(bits) && ghc.contains(Ghc::IE) {
            s.irq = true;
        }
    }

    /// One step of the device: HBA reset, acknowledgments, engine state, new commands, and
    /// (unless held) running them.
    pub fn step(&self) {
        let mut s = self.st.borrow_mut();
        let ghc = Ghc::from_bits_retain(self.abar.read32(hba::GHC));
        if ghc.contains(Ghc::HR) {
            s.hba_resets += 1;
            s.is = 0;
            s.serr = 0;
            s.sact = 0;
            s.ci = 0;
            s.accepted = 0;
            s.halted = false;
            s.tfd = Tfd::DRDY.bits();
            self.port.write32(px::CMD, 0);
            self.port.write32(px::IE, 0);
            self.abar.write32(hba::GHC, 0);
            self.publish(&mut s);
            return;
        }
        let m = self.port.read32(px::IS);
        if m != s.is {
            s.is &= !m;
        }
        let m = self.port.read32(px::SERR);
        if m != s.serr {
            s.serr &= !m;
        }
        let c = PxCmd::from_bits_retain(self.port.read32(px::CMD));
        let mut n = c;
        if c.contains(PxCmd::FRE) && !c.contains(PxCmd::FR) {
            // FIS receive starts: the device's register FIS (status ready) lands in PxTFD.
            n |= PxCmd::FR;
            s.tfd = Tfd::DRDY.bits();
        } else if !c.contains(PxCmd::FRE) {
            n &= !PxCmd::FR;
        }
        if c.contains(PxCmd::ST) && !c.contains(PxCmd::CR) {
            n |= PxCmd::CR;
            s.starts += 1;
        } else if !c.contains(PxCmd::ST) && c.contains(PxCmd::CR) {
            // The engine stops: PxCI and PxSACT clear (AHCI 3.3.14, 3.3.15).
            n &= !PxCmd::CR;
            s.ci = 0;
            s.sact = 0;
            s.accepted = 0;
            s.halted = false;
        }
        self.port.write32(px::CMD, n.bits());
        // Slots the driver sets stay set while the engine runs, even when an error stopped
        // command processing (they run, or clear when the engine stops).
        if n.contains(PxCmd::CR) {
            let m = self.port.read32(px::SACT);
            if m != s.shown_sact {
                s.sact |= m;
            }
            let m = self.port.read32(px::CI);
            if m != s.shown_ci {
                let new = m & !s.ci;
                s.ci |= new;
                s.accepted |= new;
            }
            if !s.hold && !s.halted {
                self.run(&mut s);
            }
            self.chaos_step(&mut s);
        }
        self.publish(&mut s);
    }

    fn run(&self, s: &mut State) {
        let clb = self.port.read32(px::CLB) as u64 | (self.port.read32(px::CLBU) as u64) << 32;
        let fb = self.port.read32(px::FB) as u64 | (self.port.read32(px::FBU) as u64) << 32;
        while s.accepted != 0 && !s.halted {
            let slot = s.accepted.trailing_zeros() as u8;
            let bit = 1u32 << slot;
            s.accepted &= !bit;
            let hdr = dma(clb + slot as u64 * 32, 32);
            let dw0 = hdr.read32(0);
            let ctba = hdr.read64(8);
            let prdtl = (dw0 >> 16) as u16;
            let table = dma(ctba, 0x80 + prdtl as usize * 16);
            let b = |i: usize| table.read8(i) as u64;
            let opcode = b(2) as u8;
            let features = (b(3) | b(11) << 8) as u32;
            let lba = b(4) | b(5) << 8 | b(6) << 16 | b(8) << 24 | b(9) << 32 | b(10) << 40;
            let count = (b(12) | b(13) << 8) as u32;
            let ncq = matches!(opcode, ata::READ_FPDMA_QUEUED | ata::WRITE_FPDMA_QUEUED);
            let blocks = match opcode {
                ata::READ_FPDMA_QUEUED | ata::WRITE_FPDMA_QUEUED => {
                    if features == 0 {
                        65536
                    } else {
                        features
                    }
                }
                ata::READ_DMA_EXT | ata::WRITE_DMA_EXT => {
                    if count == 0 {
                        65536
                    } else {
                        count
                    }
                }
                _ => 0,
            };
            let mut e = Executed {
                slot,
                opcode,
                lba,
                blocks,
                tag: ncq.then_some((count >> 3) as u8),
                prds: prdtl,
                fault: None,
            };
            if let Some(f) = s.faults.iter_mut().find(|f| f.matches(&e)) {
                f.times -= 1;
                e.fault = Some(f.kind);
            }
            let mut short = false;
            if let Some(c) = s.chaos
                && e.fault.is_none()
            {
                if roll(&mut s.rng, c.task_file) {
                    e.fault = Some(FaultKind::TaskFile);
                } else if roll(&mut s.rng, c.interface) {
                    e.fault = Some(FaultKind::Interface);
                } else if roll(&mut s.rng, c.hang) {
                    e.fault = Some(FaultKind::Hang);
                } else {
                    short = !ncq && blocks > 0 && roll(&mut s.rng, c.short);
                }
            }
            s.log.push(e);
            let prds: Vec<(u64, usize)> = (0..prdtl as usize)
                .map(|i| {
                    let o = 0x80 + i * 16;
                    (
                        table.read64(o),
                        (table.read32(o + 12) & 0x003f_ffff) as usize + 1,
                    )
                })
                .collect();
            let is_write = matches!(
                opcode,
                ata::WRITE_FPDMA_QUEUED | ata::WRITE_DMA_EXT | ata::DATA_SET_MANAGEMENT
            );
            // The error register and sense data of a failure: UNC on a read, ABRT otherwise;
            // WP or sense DATA PROTECT for a write to write-protected media.
            let mut err = if is_write || !ncq && blocks == 0 {
                ata_error::ABRT
            } else {
                ata_error::UNC
            };
            let mut sense = [0u8; 3];
            let wp = if is_write { s.write_protect } else { None };
            if opcode == ata::GET_MEDIA_STATUS && s.write_protect.is_some() {
                err = ata_error::WP;
            }
            match wp {
                Some(WriteProtect::WpBit) => err = ata_error::ABRT | ata_error::WP,
                Some(WriteProtect::Sense) => {
                    sense = [sense::KEY_DATA_PROTECT, sense::ASC_WRITE_PROTECTED, 0]
                }
                None => {}
            }
            let ok = match e.fault {
                _ if wp.is_some() => false,
                _ if opcode == ata::GET_MEDIA_STATUS => s.write_protect.is_none(),
                Some(FaultKind::Hang) => continue,
                Some(FaultKind::Interface) => {
                    s.serr |= (Serr::ERR_E | Serr::DIAG_H).bits();
                    self.post(s, PxIs::IFS);
                    s.halted = true;
                    continue;
                }
                Some(FaultKind::TaskFile) => false,
                None if short => {
                    // Success, but only part of the data moved, and PRDBC says so.
                    let total: usize = prds.iter().map(|p| p.1).sum();
                    let moved = (xorshift(&mut s.rng) as usize % total) & !1;
                    let mut cut = Vec::new();
                    let mut left = moved;
                    for &(a, len) in &prds {
                        if left > 0 {
                            cut.push((a, len.min(left)));
                            left -= len.min(left);
                        }
                    }
                    let mut part = e;
                    part.blocks = (moved / 512) as u32;
                    self.copy(s, &part, &cut);
                    s.shorted += 1;
                    hdr.write32(4, moved as u32);
                    true
                }
                None => {
                    let ok = self.transfer(s, &e, &prds, dw0 & 1 << 6 != 0);
                    if ok {
                        // PRDBC: the bytes moved (every PRD in full).
                        hdr.write32(4, prds.iter().map(|p| p.1 as u32).sum());
                    }
                    ok
                }
            };
            if ncq {
                // Accepted (D2H with BSY clear), then finished by a Set Device Bits FIS.
                s.ci &= !bit;
                let status = if ok { 0x40 } else { 0x41 };
                let sdb = dma(fb + 0x58, 8);
                sdb.write32(
                    0,
                    0xa1 | 0x40 << 8 | status << 16 | if ok { 0 } else { (err as u32) << 24 },
                );
                if ok {
                    s.sact &= !bit;
                    sdb.write32(4, bit);
                    self.post(s, PxIs::SDBS);
                } else {
                    sdb.write32(4, 0);
                    s.tfd = Tfd::ERR.bits() | Tfd::DRDY.bits() | (err as u32) << 8;
                    s.ncq_error = e.tag.map(|t| (t, err, sense, lba));
                    s.halted = true;
                    self.post(s, PxIs::SDBS | PxIs::TFES);
                }
            } else {
                let d2h = dma(fb + 0x40, 20);
                if ok {
                    s.ci &= !bit;
                    s.tfd = Tfd::DRDY.bits();
                    d2h.write32(0, 0x34 | 0x40 << 8 | 0x50 << 16);
                    self.post(s, PxIs::DHRS);
                } else {
                    // Aborted: the slot stays in PxCI, the port stops.
                    s.tfd = Tfd::ERR.bits() | Tfd::DRDY.bits() | (err as u32) << 8;
                    d2h.write32(0, 0x34 | 0x40 << 8 | 0x51 << 16 | (err as u32) << 24);
                    s.halted = true;
                    self.post(s, PxIs::DHRS | PxIs::TFES);
                }
            }
        }
    }

    /// Does the command's work; false when the device refuses it.
    fn transfer(&self, s: &mut State, e: &Executed, prds: &[(u64, usize)], write: bool) -> bool {
        let total: usize = prds.iter().map(|p| p.1).sum();
        match e.opcode {
            ata::READ_FPDMA_QUEUED
            | ata::WRITE_FPDMA_QUEUED
            | ata::READ_DMA_EXT
            | ata::WRITE_DMA_EXT => {
                let is_write = matches!(e.opcode, ata::WRITE_FPDMA_QUEUED | ata::WRITE_DMA_EXT);
                if e.tag.is_some_and(|t| t != e.slot)
                    || is_write != write
                    || total != e.blocks as usize * 512
                    || e.lba + e.blocks as u64 > BLOCKS
                {
                    return false;
                }
                self.copy(s, e, prds);
                true
            }
            ata::IDENTIFY_DEVICE => {
                let mut page = [0u8; 512];
                for (i, w) in s.identify.iter().enumerate() {
                    page[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
                }
                Self::to_prds(prds, &page)
            }
            ata::READ_LOG_EXT if e.lba & 0xff == crate::spec::LOG_NCQ_ERROR as u64 => {
                if !s.ncq_log {
                    return false;
                }
                let mut page = [0u8; 512];
                match s.ncq_error.take() {
                    Some((t, err, sense, lba)) => {
                        page[0] = t;
                        page[2] = 0x41;
                        page[3] = err;
                        for (i, k) in [4, 5, 6, 8, 9, 10].into_iter().enumerate() {
                            page[k] = (lba >> (8 * i)) as u8;
                        }
                        page[14..17].copy_from_slice(&sense);
                    }
                    None => page[0] = 0x80,
                }
                let sum = page.iter().fold(0u8, |a, &b| a.wrapping_add(b));
                page[511] = 0u8.wrapping_sub(sum);
                Self::to_prds(prds, &page)
            }
            ata::FLUSH_CACHE_EXT | ata::DATA_SET_MANAGEMENT => true,
            _ => false,
        }
    }

    /// Moves the data of read or write `e` between the disk and `prds`.
    fn copy(&self, s: &mut State, e: &Executed, prds: &[(u64, usize)]) {
        let is_write = matches!(e.opcode, ata::WRITE_FPDMA_QUEUED | ata::WRITE_DMA_EXT);
        let mut off = (e.lba * 512) as usize;
        for &(a, len) in prds {
            let m = dma(a, len);
            for i in 0..len {
                if is_write {
                    s.disk[off + i] = m.read8(i);
                } else {
                    m.write8(i, s.disk[off + i]);
                }
            }
            off += len;
        }
    }

    fn to_prds(prds: &[(u64, usize)], data: &[u8]) -> bool {
        let mut k = 0;
        for &(a, len) in prds {
            let m = dma(a, len);
            for i in 0..len.min(data.len() - k) {
                m.write8(i, data[k + i]);
            }
            k += len.min(data.len() - k);
        }
        k == data.len()
    }
}
