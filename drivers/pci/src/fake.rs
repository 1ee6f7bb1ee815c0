//! A device model for host tests: configuration space with write masks, which is enough to
//! emulate BAR sizing (writable address bits only), read-only IDs, bridges that route
//! configuration cycles by their bus numbers, and capability lists of any shape.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ops::RangeInclusive;
use std::sync::Mutex;

use hal::{Mmio, MmioMapper, PhysAddr};

use crate::config::{Bdf, ConfigAccess};

/// One function's configuration space.
#[derive(Clone)]
pub struct FakeFn {
    pub parent: Option<usize>,
    pub dev: u8,
    pub func: u8,
    pub regs: [u32; 1024],
    pub wmask: [u32; 1024],
}

impl FakeFn {
    /// An endpoint (header type 0) at `dev.func` with `class` = class << 16 | sub << 8 | prog-if.
    pub fn endpoint(dev: u8, func: u8, vendor: u16, device: u16, class: u32) -> FakeFn {
        let mut f = FakeFn {
            parent: None,
            dev,
            func,
            regs: [0; 1024],
            wmask: [0; 1024],
        };
        f.regs[0] = u32::from(vendor) | u32::from(device) << 16;
        f.regs[2] = class << 8 | 0x01;
        f.wmask[1] = 0x0000_0547;
        f.wmask[15] = 0x0000_00ff;
        f.wmask[12] = 0xffff_f801; // expansion ROM
        f
    }

    /// A PCI-to-PCI bridge (header type 1).
    pub fn bridge(dev: u8, func: u8) -> FakeFn {
        let mut f = FakeFn::endpoint(dev, func, 0x1b36, 0x000c, 0x06_04_00);
        f.regs[3] = 1 << 16;
        f.wmask[6] = 0xffff_ffff;
        f.wmask[7] = 0x0000_f0f0;
        f.regs[7] = 0x0000_0101; // 32-bit I/O decoding
        f.wmask[8] = 0xfff0_fff0;
        f.wmask[9] = 0xfff0_fff0;
        f.wmask[10] = 0xffff_ffff;
        f.wmask[11] = 0xffff_ffff;
        f.wmask[12] = 0xffff_ffff;
        f.wmask[14] = 0xffff_f801;
        f
    }

    pub fn under(mut self, parent: usize) -> FakeFn {
        self.parent = Some(parent);
        self
    }

    pub fn multi(mut self) -> FakeFn {
        self.regs[3] |= 0x80 << 16;
        self
    }

    pub fn pin(mut self, pin: u8) -> FakeFn {
        self.regs[15] = (self.regs[15] & !0xff00) | u32::from(pin) << 8;
        self
    }

    pub fn mem32(mut self, i: usize, size: u64, pref: bool) -> FakeFn {
        self.regs[4 + i] = if pref { 0b1000 } else { 0 };
        self.wmask[4 + i] = !(size - 1) as u32 & !0xf;
        self
    }

    pub fn mem64(mut self, i: usize, size: u64, pref: bool) -> FakeFn {
        self.regs[4 + i] = 0b100 | if pref { 0b1000 } else { 0 };
        self.wmask[4 + i] = !(size - 1) as u32 & !0xf;
        self.wmask[5 + i] = (!(size - 1) >> 32) as u32;
        self
    }

    pub fn io(mut self, i: usize, size: u32) -> FakeFn {
        self.regs[4 + i] = 1;
        self.wmask[4 + i] = !(size - 1) & !0b11;
        self
    }

    /// Sets the raw BAR register (for reserved types).
    pub fn raw_bar(mut self, i: usize, value: u32, wmask: u32) -> FakeFn {
        self.regs[4 + i] = value;
        self.wmask[4 + i] = wmask;
        self
    }

    /// Points the capability list at `ptr` and sets the status bit.
    pub fn cap_ptr(mut self, ptr: u8) -> FakeFn {
        self.regs[1] |= 1 << 20;
        self.regs[13] = u32::from(ptr);
        self
    }

    /// A capability header dword at `off`: `id`, `next`, control `ctrl` with writable bits
    /// `ctrl_wmask`.
    pub fn cap(mut self, off: u8, id: u8, next: u8, ctrl: u16, ctrl_wmask: u16) -> FakeFn {
        let i = usize::from(off) / 4;
        self.regs[i] = u32::from(id) | u32::from(next) << 8 | u32::from(ctrl) << 16;
        self.wmask[i] = u32::from(ctrl_wmask) << 16;
        self
    }

    /// An MSI capability with 4 vectors.
    pub fn msi(self, off: u8, next: u8, addr64: bool, pvm: bool) -> FakeFn {
        let ctrl = 2 << 1 | u16::from(addr64) << 7 | u16::from(pvm) << 8;
        let mut f = self.cap(off, 0x05, next, ctrl, 0x0071);
        let i = usize::from(off) / 4;
        f.wmask[i + 1] = 0xffff_fffc;
        let data = if addr64 {
            f.wmask[i + 2] = 0xffff_ffff;
            i + 3
        } else {
            i + 2
        };
        f.wmask[data] = 0x0000_ffff;
        if pvm {
            f.wmask[data + 1] = 0x0000_000f;
            f.regs[data + 1] = 0xf;
        }
        f
    }

    /// An MSI-X capability with `n` entries.
    pub fn msix(self, off: u8, next: u8, n: u16, table: (u8, u32), pba: (u8, u32)) -> FakeFn {
        let mut f = self.cap(off, 0x11, next, n - 1, 0xc000);
        let i = usize::from(off) / 4;
        f.regs[i + 1] = table.1 | u32::from(table.0);
        f.regs[i + 2] = pba.1 | u32::from(pba.0);
        f
    }

    pub fn reg(&self, off: u16) -> u32 {
        self.regs[usize::from(off) / 4]
    }

    fn is_bridge(&self) -> bool {
        (self.regs[3] >> 16) & 0x7f == 1
    }
}

/// A bus tree of [`FakeFn`]s, reached like real hardware: bus 0 directly, other buses through
/// the bridges whose secondary/subordinate numbers cover them.
pub struct FakeBus {
    pub fns: RefCell<Vec<FakeFn>>,
    pub writes: RefCell<Vec<(Bdf, u16, u32)>>,
    pub buses: RangeInclusive<u8>,
}

impl FakeBus {
    pub fn new(fns: Vec<FakeFn>) -> FakeBus {
        FakeBus {
            fns: RefCell::new(fns),
            writes: RefCell::new(Vec::new()),
            buses: 0..=255,
        }
    }

    /// Index of the function at `bdf`, routing through bridges.
    fn resolve(&self, bdf: Bdf) -> Option<usize> {
        let fns = self.fns.borrow();
        let mut parent = None;
        let mut bus = *self.buses.start();
        for _ in 0..256 {
            if bdf.bus() == bus {
                return fns.iter().position(|f| {
                    f.parent == parent && f.dev == bdf.dev() && f.func == bdf.func()
                });
            }
            let next = fns.iter().position(|f| {
                let (sec, sub) = ((f.regs[6] >> 8) as u8, (f.regs[6] >> 16) as u8);
                f.parent == parent
                    && f.is_bridge()
                    && sec > bus
                    && sec <= bdf.bus()
                    && bdf.bus() <= sub
            })?;
            parent = Some(next);
            bus = (fns[next].regs[6] >> 8) as u8;
        }
        None
    }

    /// The function at (topology) index `i`.
    pub fn get(&self, i: usize) -> FakeFn {
        self.fns.borrow()[i].clone()
    }
}

impl ConfigAccess for FakeBus {
    fn bus_range(&self) -> RangeInclusive<u8> {
        self.buses.clone()
    }

    fn read32(&self, bdf: Bdf, off: u16) -> u32 {
        assert!(
            off.is_multiple_of(4) && off < 4096,
            "bad config offset {off:#x}"
        );
        match self.resolve(bdf) {
            Some(i) => self.fns.borrow()[i].regs[usize::from(off) / 4],
            None => u32::MAX,
        }
    }

    fn write32(&self, bdf: Bdf, off: u16, value: u32) {
        assert!(
            off.is_multiple_of(4) && off < 4096,
            "bad config offset {off:#x}"
        );
        self.writes.borrow_mut().push((bdf, off, value));
        if let Some(i) = self.resolve(bdf) {
            let f = &mut self.fns.borrow_mut()[i];
            let r = usize::from(off) / 4;
            f.regs[r] = (f.regs[r] & !f.wmask[r]) | (value & f.wmask[r]);
        }
    }
}

/// Plain memory standing in for the physical range `base..base + len`, handed out as MMIO.
pub struct FakeMapper {
    base: u64,
    mem: usize,
    len: usize,
    pub maps: Mutex<Vec<(u64, usize)>>,
}

impl FakeMapper {
    pub fn new(base: u64, len: usize) -> FakeMapper {
        let mem: &'static mut [u64] = Box::leak(vec![0u64; len / 8].into_boxed_slice());
        FakeMapper {
            base,
            mem: mem.as_mut_ptr() as usize,
            len,
            maps: Mutex::new(Vec::new()),
        }
    }

    /// A handle on everything, for tests to look at what drivers wrote.
    pub fn all(&self) -> Mmio {
        // SAFETY: `mem` is leaked heap memory of `len` bytes, alive for the rest of the
        // program and only accessed through `Mmio` handles with volatile accesses.
        unsafe { Mmio::new(self.mem, PhysAddr(self.base), self.len) }
    }
}

impl MmioMapper for FakeMapper {
    fn map(&self, phys: PhysAddr, len: usize) -> Option<Mmio> {
        let off = phys.0.checked_sub(self.base)? as usize;
        if off.checked_add(len)? > self.len {
            return None;
        }
        self.maps.lock().ok()?.push((phys.0, len));
        self.all().subregion(off, len)
    }
}
