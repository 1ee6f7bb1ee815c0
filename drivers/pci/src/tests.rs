//! Host tests against the device model in `fake.rs`.

use hal::{MsiMessage, PhysAddr};

use crate::fake::{FakeBus, FakeFn, FakeMapper};
use crate::*;

const MEM32_BASE: u64 = 0x4000_0000;
const MEM32_SIZE: u64 = 0x0100_0000;

fn windows() -> Windows {
    Windows {
        mem32: Some(Window::new(PhysAddr(MEM32_BASE), MEM32_SIZE)),
        ..Windows::default()
    }
}

/// Roughly what q35 shows with a virtio-blk and an NVMe device added.
fn q35() -> FakeBus {
    FakeBus::new(vec![
        FakeFn::endpoint(0, 0, 0x8086, 0x29c0, 0x06_00_00),
        // virtio-blk, transitional: legacy I/O BAR0, MSI-X table in BAR1, modern BAR4.
        FakeFn::endpoint(1, 0, 0x1af4, 0x1001, 0x01_00_00)
            .io(0, 0x80)
            .mem32(1, 0x1000, false)
            .mem64(4, 0x4000, true)
            .pin(1)
            .cap_ptr(0x98)
            .msix(0x98, 0x84, 2, (1, 0), (1, 0x800))
            .cap(0x84, 0x09, 0x70, 0, 0)
            .cap(0x70, 0x09, 0, 0, 0),
        // NVMe: BAR0 64-bit 16 KiB with the MSI-X table.
        FakeFn::endpoint(2, 0, 0x1b36, 0x0010, 0x01_08_02)
            .mem64(0, 0x4000, false)
            .pin(1)
            .cap_ptr(0x40)
            .msix(0x40, 0x80, 65, (0, 0x2000), (0, 0x3000))
            .cap(0x80, 0x10, 0x60, 0x0002, 0)
            .cap(0x60, 0x01, 0, 0x0003, 0),
        // edu: BAR0 1 MiB, MSI.
        FakeFn::endpoint(3, 0, 0x1234, 0x11e8, 0x00_ff_00)
            .mem32(0, 0x10_0000, false)
            .pin(1)
            .cap_ptr(0x40)
            .msi(0x40, 0, true, false),
        FakeFn::endpoint(0x1f, 0, 0x8086, 0x2918, 0x06_01_00).multi(),
        FakeFn::endpoint(0x1f, 2, 0x8086, 0x2922, 0x01_06_01)
            .io(0, 8)
            .io(1, 4)
            .io(2, 8)
            .io(3, 4)
            .io(4, 0x20)
            .mem32(5, 0x1000, false)
            .pin(1)
            .cap_ptr(0x80)
            .msi(0x80, 0, false, false),
        FakeFn::endpoint(0x1f, 3, 0x8086, 0x2930, 0x0c_05_00)
            .io(4, 0x40)
            .pin(1),
    ])
}

fn assigned_memory<C: ConfigAccess + ?Sized>(funcs: &[PciFunction<'_, C>]) -> Vec<Bar> {
    funcs
        .iter()
        .flat_map(|f| f.bar_slots())
        .filter_map(|s| match s {
            BarSlot::Assigned(b) if b.kind.is_memory() => Some(b),
            _ => None,
        })
        .collect()
}

fn assert_disjoint(bars: &[Bar]) {
    for (i, a) in bars.iter().enumerate() {
        for b in &bars[i + 1..] {
            let (a0, a1) = (a.pci_addr, a.pci_addr + a.size.max(MIN_MEM_BLOCK));
            let (b0, b1) = (b.pci_addr, b.pci_addr + b.size.max(MIN_MEM_BLOCK));
            assert!(a1 <= b0 || b1 <= a0, "{a:x?} overlaps {b:x?}");
        }
    }
}

#[test]
fn finds_every_function_in_order() {
    let bus = q35();
    let funcs = enumerate(&bus, &windows()).unwrap();
    let found: Vec<_> = funcs
        .iter()
        .map(|f| (f.bdf().dev(), f.bdf().func(), f.vendor_id(), f.device_id()))
        .collect();
    assert_eq!(
        found,
        [
            (0, 0, 0x8086, 0x29c0),
            (1, 0, 0x1af4, 0x1001),
            (2, 0, 0x1b36, 0x0010),
            (3, 0, 0x1234, 0x11e8),
            (0x1f, 0, 0x8086, 0x2918),
            (0x1f, 2, 0x8086, 0x2922),
            (0x1f, 3, 0x8086, 0x2930),
        ]
    );
    let nvme = &funcs[2];
    assert_eq!(
        nvme.class(),
        ClassCode {
            class: 1,
            subclass: 8,
            prog_if: 2
        }
    );
    assert_eq!(nvme.class().name(), "NVM controller (NVMe)");
    assert_eq!(funcs[5].class().name(), "SATA controller (AHCI)");
    assert_eq!(nvme.revision(), 1);
    assert_eq!(nvme.header_type(), 0);
    assert!(funcs[4].is_multi_function());
    assert_eq!(nvme.interrupt_pin(), Some(IntxPin::A));
    assert_eq!(funcs[4].interrupt_pin(), None);
    assert_eq!(nvme.msix_offset(), Some(0x40));
    assert_eq!(nvme.pcie_offset(), Some(0x80));
    assert_eq!(nvme.power_management_offset(), Some(0x60));
    assert_eq!(funcs[3].msi_offset(), Some(0x40));
    let virtio_caps: Vec<_> = funcs[1]
        .capabilities()
        .iter()
        .map(|c| (c.id, c.offset))
        .collect();
    assert_eq!(virtio_caps, [(0x11, 0x98), (0x09, 0x84), (0x09, 0x70)]);
    let s = nvme.summary();
    assert_eq!(
        (s.vendor_id, s.device_id, s.msix, s.msi),
        (0x1b36, 0x0010, true, false)
    );
}

#[test]
fn memory_bars_are_aligned_disjoint_and_inside_the_window() {
    let bus = q35();
    let funcs = enumerate(&bus, &windows()).unwrap();
    let bars = assigned_memory(&funcs);
    assert_eq!(bars.len(), 5);
    for b in &bars {
        assert!(b.pci_addr >= MEM32_BASE && b.pci_addr + b.size <= MEM32_BASE + MEM32_SIZE);
        assert_eq!(b.pci_addr % b.size.max(MIN_MEM_BLOCK), 0, "{b:x?}");
        assert_eq!(b.cpu_addr, PhysAddr(b.pci_addr));
    }
    assert_disjoint(&bars);
    // The largest BAR (edu's 1 MiB) goes first, at the window base.
    assert_eq!(funcs[3].bar(0).unwrap().pci_addr, MEM32_BASE);
    // The registers hold what the list says, and memory decoding is on.
    for (i, f) in funcs.iter().enumerate() {
        let model = bus.get(i);
        for slot in 0..6 {
            if let Some(b) = f.bar(slot).filter(|b| b.kind.is_memory()) {
                assert_eq!(
                    u64::from(model.regs[4 + slot] & !0xf),
                    b.pci_addr & 0xffff_fff0
                );
                if b.kind == BarKind::Mem64 {
                    assert_eq!(u64::from(model.regs[5 + slot]), b.pci_addr >> 32);
                }
            }
        }
        let has_mem = f
            .bar_slots()
            .iter()
            .any(|s| matches!(s, BarSlot::Assigned(b) if b.kind.is_memory()));
        assert_eq!(f.command() & 0b10 != 0, has_mem, "{:?}", f.bdf());
    }
}

#[test]
fn sizing_happens_with_decoding_off() {
    let bus = q35();
    bus.fns.borrow_mut()[2].regs[1] = 0x0000_0007;
    let _ = enumerate(&bus, &windows()).unwrap();
    let nvme = Bdf::new(0, 2, 0);
    let log = bus.writes.borrow();
    let first_bar_write = log.iter().position(|w| w.0 == nvme && w.1 == 0x10).unwrap();
    let cmd_off = log.iter().position(|w| w.0 == nvme && w.1 == 0x04).unwrap();
    assert!(cmd_off < first_bar_write);
    assert_eq!(
        log[cmd_off].2 & 0b11,
        0,
        "decoding must be off while sizing"
    );
    // Bus mastering as found is kept, memory decoding is back on at the end, and I/O
    // decoding (no I/O BARs) is as found.
    assert_eq!(bus.get(2).reg(0x04) & 0xffff, 0x0007);
}

#[test]
fn sixty_four_bit_bars_take_two_slots() {
    let bus = q35();
    let w = Windows {
        mem64: Some(Window::new(PhysAddr(0x4_0000_0000), 0x4_0000_0000)),
        ..windows()
    };
    let funcs = enumerate(&bus, &w).unwrap();
    let nvme = &funcs[2];
    let bar0 = nvme.bar(0).unwrap();
    assert_eq!(bar0.kind, BarKind::Mem64);
    assert_eq!(bar0.size, 0x4000);
    assert_eq!(nvme.bar_slot(1), BarSlot::Upper);
    assert!(bar0.pci_addr >= 0x4_0000_0000);
    assert_eq!(bar0.pci_addr % 0x4000, 0);
    let model = bus.get(2);
    assert_eq!(model.regs[4] & !0xf, bar0.pci_addr as u32);
    assert_eq!(model.regs[5], (bar0.pci_addr >> 32) as u32);
    let virtio = &funcs[1];
    assert_eq!(virtio.bar_slot(5), BarSlot::Upper);
    assert!(virtio.bar(4).unwrap().prefetchable);
    // 32-bit BARs stay below 4 GiB.
    assert!(funcs[3].bar(0).unwrap().pci_addr < 1 << 32);
}

#[test]
fn sixty_four_bit_bars_fall_back_to_the_32_bit_window() {
    let bus = q35();
    // Room for one 16 KiB BAR only.
    let w = Windows {
        mem64: Some(Window::new(PhysAddr(0x1_0000_0000), 0x4000)),
        ..windows()
    };
    let funcs = enumerate(&bus, &w).unwrap();
    let high: Vec<_> = assigned_memory(&funcs)
        .into_iter()
        .filter(|b| b.pci_addr >= 1 << 32)
        .collect();
    assert_eq!(high.len(), 1);
    assert!(funcs[1].bar(4).is_some() && funcs[2].bar(0).is_some());
}

#[test]
fn exhausted_window_is_an_error_for_that_bar_only() {
    let bus = q35();
    // 64 KiB: no room for edu's 1 MiB BAR, room for the rest.
    let w = Windows {
        mem32: Some(Window::new(PhysAddr(MEM32_BASE), 0x1_0000)),
        ..Windows::default()
    };
    let funcs = enumerate(&bus, &w).unwrap();
    let edu = &funcs[3];
    assert_eq!(
        edu.bar_slot(0),
        BarSlot::Failed(
            BarRequest {
                kind: BarKind::Mem32,
                prefetchable: false,
                size: 0x10_0000
            },
            PciError::WindowExhausted
        )
    );
    assert_eq!(
        edu.command() & 0b10,
        0,
        "no memory decoding with a BAR unplaced"
    );
    assert_eq!(edu.enable_memory_space(), Err(PciError::BarNotAssigned));
    assert!(funcs[2].bar(0).is_some());
    assert!(funcs[5].bar(5).is_some());
    assert_disjoint(&assigned_memory(&funcs));
    let mut list: heapless::Vec<PciFunction<'_, FakeBus>, 16> = heapless::Vec::new();
    let report = enumerate_into(&bus, &w, &mut list).unwrap();
    // edu's BAR, plus the I/O BARs without an I/O window (5 AHCI, 1 SMBus, 1 virtio).
    assert_eq!(report.failed_bars, 1 + 7);
}

#[test]
fn io_bars_need_an_io_window() {
    let bus = q35();
    let funcs = enumerate(&bus, &windows()).unwrap();
    let ahci = &funcs[5];
    assert!(matches!(
        ahci.bar_slot(4),
        BarSlot::Failed(_, PciError::NoWindow)
    ));
    assert_eq!(ahci.command() & 0b11, 0b10);
    assert_eq!(
        ahci.map_bar(5, &FakeMapper::new(MEM32_BASE, MEM32_SIZE as usize))
            .map(|m| m.len()),
        Some(0x1000)
    );

    let bus = q35();
    let w = Windows {
        io: Some(Window::new(PhysAddr(0xc000), 0x1000)),
        ..windows()
    };
    let funcs = enumerate(&bus, &w).unwrap();
    let mut io: Vec<Bar> = funcs
        .iter()
        .flat_map(|f| f.bar_slots())
        .filter_map(|s| match s {
            BarSlot::Assigned(b) if b.kind == BarKind::Io => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(io.len(), 7);
    io.sort_by_key(|b| b.pci_addr);
    for pair in io.windows(2) {
        assert!(pair[0].pci_addr + pair[0].size <= pair[1].pci_addr);
    }
    for b in &io {
        assert!(b.pci_addr >= 0xc000 && b.pci_addr + b.size <= 0xd000);
        assert_eq!(b.pci_addr % b.size, 0);
    }
    assert_eq!(funcs[5].command() & 0b11, 0b11);
    assert_eq!(
        bus.get(6).regs[8] & !3,
        funcs[6].bar(4).unwrap().pci_addr as u32
    );
    assert!(funcs[6].map_bar(4, &FakeMapper::new(0, 0x10000)).is_none());
    assert_eq!(
        funcs[6].try_map_bar(4, &FakeMapper::new(0, 0x10000)).err(),
        Some(PciError::NotMemoryBar)
    );
}

#[test]
fn translated_windows_give_cpu_addresses() {
    let bus = q35();
    let w = Windows {
        io: Some(Window::translated(0, PhysAddr(0x0300_0000), 0x1_0000)),
        ..windows()
    };
    let funcs = enumerate(&bus, &w).unwrap();
    let bar = funcs[6].bar(4).unwrap();
    assert_eq!(bar.cpu_addr, PhysAddr(0x0300_0000 + bar.pci_addr));
}

#[test]
fn bad_windows_are_rejected() {
    let bus = q35();
    let above = Windows {
        mem32: Some(Window::new(PhysAddr(0xffff_0000), 0x2_0000)),
        ..Windows::default()
    };
    assert_eq!(enumerate(&bus, &above).err(), Some(PciError::BadWindow));
    let empty = Windows {
        mem32: Some(Window::new(PhysAddr(0x4000_0000), 0)),
        ..Windows::default()
    };
    assert_eq!(enumerate(&bus, &empty).err(), Some(PciError::BadWindow));
}

#[test]
fn absent_and_aliased_functions_are_skipped() {
    let bus = FakeBus::new(vec![
        // Single-function device that answers on every function number: list function 0 only.
        FakeFn::endpoint(4, 0, 0x1af4, 0x1042, 0x01_00_00),
        FakeFn::endpoint(4, 1, 0x1af4, 0x1042, 0x01_00_00),
        // Multi-function device with a hole at function 1.
        FakeFn::endpoint(5, 0, 0x8086, 0x1111, 0x0c_05_00).multi(),
        FakeFn::endpoint(5, 2, 0x8086, 0x2222, 0x0c_05_00),
        FakeFn::endpoint(5, 7, 0x8086, 0x3333, 0x0c_05_00),
    ]);
    let funcs = enumerate(&bus, &windows()).unwrap();
    let found: Vec<_> = funcs
        .iter()
        .map(|f| (f.bdf().dev(), f.bdf().func()))
        .collect();
    assert_eq!(found, [(4, 0), (5, 0), (5, 2), (5, 7)]);
}

#[test]
fn invalid_bars_are_flagged() {
    let bus = FakeFn::endpoint(1, 0, 0x1234, 0x5678, 0xff_00_00)
        .mem64(5, 0x1000, false)
        .raw_bar(0, 0b110, 0xffff_f000)
        .mem32(2, 0x2000, false);
    let bus = FakeBus::new(vec![bus]);
    let funcs = enumerate(&bus, &windows()).unwrap();
    let f = &funcs[0];
    assert_eq!(f.bar_slot(0), BarSlot::Invalid);
    assert_eq!(f.bar_slot(5), BarSlot::Invalid);
    assert!(f.bar(2).is_some());
    assert_eq!(f.bar_slot(1), BarSlot::Unused);
    assert_eq!(f.bar_slot(9), BarSlot::Unused);
    assert_eq!(
        f.try_map_bar(0, &FakeMapper::new(MEM32_BASE, 0x10000))
            .err(),
        Some(PciError::NoSuchBar)
    );
}

#[test]
fn corrupt_capability_lists_terminate() {
    let bus = FakeBus::new(vec![
        // A -> B -> A loop.
        FakeFn::endpoint(1, 0, 0x1234, 1, 0)
            .cap_ptr(0x40)
            .cap(0x40, 0x05, 0x50, 0, 0)
            .cap(0x50, 0x11, 0x40, 0, 0),
        // Self loop through a misaligned pointer (0x61 reads as 0x60).
        FakeFn::endpoint(2, 0, 0x1234, 2, 0)
            .cap_ptr(0x61)
            .cap(0x60, 0x09, 0x63, 0, 0),
        // Pointer into the header.
        FakeFn::endpoint(3, 0, 0x1234, 3, 0)
            .cap_ptr(0x40)
            .cap(0x40, 0x01, 0x10, 0, 0),
        // Status says "no list": the pointer is ignored.
        FakeFn::endpoint(4, 0, 0x1234, 4, 0).cap(0x40, 0x01, 0x00, 0, 0),
        // A well-formed chain through every dword: more entries than kept.
        (0x40u8..0xfc).step_by(4).fold(
            FakeFn::endpoint(5, 0, 0x1234, 5, 0).cap_ptr(0x40),
            |f, off| f.cap(off, 0x09, off + 4, 0, 0),
        ),
    ]);
    let funcs = enumerate(&bus, &windows()).unwrap();
    let caps = |i: usize| {
        funcs[i]
            .capabilities()
            .iter()
            .map(|c| c.offset)
            .collect::<Vec<_>>()
    };
    assert_eq!(caps(0), [0x40, 0x50]);
    assert!(funcs[0].capabilities().truncated());
    assert_eq!(funcs[0].msix_offset(), Some(0x50));
    assert_eq!(caps(1), [0x60]);
    assert!(funcs[1].capabilities().truncated());
    assert_eq!(caps(2), [0x40]);
    assert!(funcs[2].capabilities().truncated());
    assert!(caps(3).is_empty());
    assert!(!funcs[3].capabilities().truncated());
    assert_eq!(caps(4).len(), cap::MAX_CAPS);
    assert!(funcs[4].capabilities().truncated());
}

#[test]
fn every_capability_of_one_kind_is_found_in_list_order() {
    let bus = q35();
    let funcs = enumerate(&bus, &windows()).unwrap();
    let virtio = &funcs[1];
    let caps = virtio.capabilities();
    assert_eq!(
        caps.find_all(cap::id::VENDOR).collect::<Vec<_>>(),
        [0x84, 0x70]
    );
    assert_eq!(caps.find_all(cap::id::MSIX).collect::<Vec<_>>(), [0x98]);
    assert_eq!(caps.find_all(cap::id::MSI).count(), 0);
    // The first of a kind is what `find` returns.
    assert_eq!(caps.find(cap::id::VENDOR), Some(0x84));
}

#[test]
fn extended_capability_walk_is_bounded() {
    let mut f = FakeFn::endpoint(1, 0, 0x1234, 1, 0)
        .cap_ptr(0x40)
        .cap(0x40, 0x10, 0, 0x0002, 0);
    // 0x100: AER (id 1) -> 0x140: id 0x19 -> back to 0x100.
    f.regs[0x100 / 4] = 0x0001 | 1 << 16 | 0x140 << 20;
    f.regs[0x140 / 4] = 0x0019 | 1 << 16 | 0x100 << 20;
    let bus = FakeBus::new(vec![f]);
    let funcs = enumerate(&bus, &windows()).unwrap();
    assert_eq!(funcs[0].find_ext_capability(0x19), Some(0x140));
    assert_eq!(funcs[0].find_ext_capability(0x0b), None);
}

#[test]
fn msi_64_bit_programming() {
    let bus = FakeBus::new(vec![
        FakeFn::endpoint(3, 0, 0x1234, 0x11e8, 0x00_ff_00)
            .mem32(0, 0x10_0000, false)
            .pin(1)
            .cap_ptr(0x40)
            .msi(0x40, 0, true, true),
    ]);
    let funcs = enumerate(&bus, &windows()).unwrap();
    let edu = &funcs[0];
    let info = edu.msi_info().unwrap();
    assert!(info.addr64 && info.per_vector_masking && !info.enabled);
    assert_eq!(info.max_vectors, 4);
    let msg = MsiMessage {
        address: 0x1_fee0_0000,
        data: 0x41,
    };
    edu.enable_msi(msg).unwrap();
    let m = bus.get(0);
    assert_eq!(m.reg(0x44), 0xfee0_0000);
    assert_eq!(m.reg(0x48), 1);
    assert_eq!(m.reg(0x4c), 0x41);
    assert_eq!(m.reg(0x50), 0xe, "vector 0 unmasked, others untouched");
    assert_eq!(m.reg(0x40) >> 16 & 0x71, 0x01, "enabled, one vector");
    assert_ne!(edu.command() & (1 << 10), 0, "INTx off");
    assert!(edu.msi_info().unwrap().enabled);
    edu.set_msi_masked(2, false).unwrap();
    assert_eq!(bus.get(0).reg(0x50), 0xa);
    assert_eq!(edu.set_msi_masked(4, true), Err(PciError::VectorOutOfRange));
    assert_eq!(edu.msi_pending(0), Ok(false));
    edu.disable_msi().unwrap();
    assert!(!edu.msi_info().unwrap().enabled);
}

#[test]
fn msi_32_bit_programming_and_limits() {
    let bus = q35();
    let funcs = enumerate(&bus, &windows()).unwrap();
    let ahci = &funcs[5];
    assert!(!ahci.msi_info().unwrap().addr64);
    let wide = MsiMessage {
        address: 0x1_0000_0000,
        data: 1,
    };
    assert_eq!(ahci.enable_msi(wide), Err(PciError::AddressTooWide));
    let big = MsiMessage {
        address: 0xfee0_0000,
        data: 0x1_0000,
    };
    assert_eq!(ahci.enable_msi(big), Err(PciError::DataTooWide));
    assert_eq!(ahci.set_msi_masked(0, true), Err(PciError::NoCapability));
    ahci.enable_msi(MsiMessage {
        address: 0xfee0_1000,
        data: 0x32,
    })
    .unwrap();
    let m = bus.get(5);
    assert_eq!(m.reg(0x84), 0xfee0_1000);
    assert_eq!(m.reg(0x88), 0x32);
    assert_eq!(m.reg(0x80) >> 16 & 1, 1);
    assert_eq!(
        funcs[2].enable_msi(MsiMessage {
            address: 0,
            data: 0
        }),
        Err(PciError::NoCapability)
    );
}

#[test]
fn msix_table_programming() {
    let bus = q35();
    let funcs = enumerate(&bus, &windows()).unwrap();
    let mapper = FakeMapper::new(MEM32_BASE, MEM32_SIZE as usize);
    let nvme = &funcs[2];
    let bar0 = nvme.bar(0).unwrap();
    assert_eq!(nvme.msix_table_size(), Some(65));
    let table = nvme.msix(&mapper).unwrap();
    assert_eq!(table.len(), 65);
    // Only ranges inside the BAR were mapped: the table (65 entries) and the PBA (2 words).
    for &(addr, len) in mapper.maps.lock().unwrap().iter() {
        assert!(addr >= bar0.pci_addr && addr + len as u64 <= bar0.pci_addr + bar0.size);
    }
    assert_eq!(
        *mapper.maps.lock().unwrap(),
        [
            (bar0.pci_addr + 0x2000, 65 * 16),
            (bar0.pci_addr + 0x3000, 16)
        ]
    );

    let mem = mapper.all();
    let entry = (bar0.pci_addr - MEM32_BASE) as usize + 0x2000 + 16 * 64;
    mem.write32(entry + 12, 1); // masked, as after reset
    let msg = MsiMessage {
        address: 0x2_fee0_0000,
        data: 0x55,
    };
    table.set_entry(64, msg).unwrap();
    assert_eq!(mem.read32(entry), 0xfee0_0000);
    assert_eq!(mem.read32(entry + 4), 2);
    assert_eq!(mem.read32(entry + 8), 0x55);
    assert_eq!(table.entry_message(64), Ok(msg));
    assert_eq!(table.is_masked(64), Ok(true));
    table.unmask(64).unwrap();
    assert_eq!(mem.read32(entry + 12), 0);
    table.mask(64).unwrap();
    assert_eq!(mem.read32(entry + 12), 1);
    assert_eq!(table.set_entry(65, msg), Err(PciError::VectorOutOfRange));
    let pba = (bar0.pci_addr - MEM32_BASE) as usize + 0x3000;
    mem.write64(pba + 8, 1);
    assert_eq!(table.is_pending(64), Ok(true));
    assert_eq!(table.is_pending(63), Ok(false));

    table.set_function_mask(true);
    assert_eq!(bus.get(2).reg(0x40) >> 16 & 0xc000, 0x4000);
    table.enable();
    assert!(table.is_enabled());
    assert_eq!(
        bus.get(2).reg(0x40) >> 16 & 0xc000,
        0x8000,
        "enabled, function mask clear"
    );
    assert_ne!(nvme.command() & (1 << 10), 0, "INTx off");
    table.disable();
    assert!(!table.is_enabled());
}

#[test]
fn msix_needs_its_bar_assigned_and_the_table_inside_it() {
    let bus = FakeBus::new(vec![
        // Table past the end of its 4 KiB BAR.
        FakeFn::endpoint(1, 0, 0x1af4, 0x1042, 0x01_00_00)
            .mem32(1, 0x1000, false)
            .cap_ptr(0x40)
            .msix(0x40, 0, 4, (1, 0xff8), (1, 0x800)),
        // Table in a BAR that does not exist.
        FakeFn::endpoint(2, 0, 0x1af4, 0x1042, 0x01_00_00)
            .mem32(1, 0x1000, false)
            .cap_ptr(0x40)
            .msix(0x40, 0, 4, (2, 0), (1, 0x800)),
        // Table in a BAR that did not fit.
        FakeFn::endpoint(3, 0, 0x1af4, 0x1042, 0x01_00_00)
            .mem32(0, 0x200_0000, false)
            .cap_ptr(0x40)
            .msix(0x40, 0, 4, (0, 0), (0, 0x800)),
    ]);
    let funcs = enumerate(&bus, &windows()).unwrap();
    let mapper = FakeMapper::new(MEM32_BASE, MEM32_SIZE as usize);
    assert_eq!(
        funcs[0].msix(&mapper).err(),
        Some(PciError::TableOutsideBar)
    );
    assert_eq!(funcs[1].msix(&mapper).err(), Some(PciError::NoSuchBar));
    assert_eq!(funcs[2].msix(&mapper).err(), Some(PciError::BarNotAssigned));
    assert!(mapper.maps.lock().unwrap().is_empty());
    let small = FakeMapper::new(0, 0x1000);
    assert_eq!(
        funcs[0].try_map_bar(1, &small).err(),
        Some(PciError::MapFailed)
    );
}

#[test]
fn enabling_msi_turns_msix_off_and_the_other_way_round() {
    let bus = FakeBus::new(vec![
        FakeFn::endpoint(1, 0, 0x1234, 0x1, 0)
            .mem32(0, 0x1000, false)
            .cap_ptr(0x40)
            .msi(0x40, 0x50, false, false)
            .msix(0x50, 0, 1, (0, 0), (0, 0x800)),
    ]);
    let funcs = enumerate(&bus, &windows()).unwrap();
    let mapper = FakeMapper::new(MEM32_BASE, MEM32_SIZE as usize);
    let f = &funcs[0];
    let table = f.msix(&mapper).unwrap();
    table.enable();
    f.enable_msi(MsiMessage {
        address: 0xfee0_0000,
        data: 1,
    })
    .unwrap();
    assert!(!table.is_enabled());
    table.enable();
    assert!(!f.msi_info().unwrap().enabled);
}

/// Bus 0: a bridge at 00:01.0 with, below it, an endpoint at 01:00.0 and a second bridge at
/// 01:02.0 leading to an endpoint at 02:03.0; an endpoint at 00:04.0 after the bridge.
fn bridged() -> FakeBus {
    FakeBus::new(vec![
        FakeFn::endpoint(0, 0, 0x1b36, 0x0008, 0x06_00_00),
        FakeFn::bridge(1, 0),
        FakeFn::endpoint(0, 0, 0x1b36, 0x0010, 0x01_08_02)
            .under(1)
            .mem64(0, 0x4000, false)
            .pin(1),
        FakeFn::bridge(2, 0).under(1),
        FakeFn::endpoint(3, 0, 0x1234, 0x11e8, 0x00_ff_00)
            .under(3)
            .mem32(0, 0x10_0000, false)
            .io(1, 0x100)
            .pin(2),
        FakeFn::endpoint(4, 0, 0x1af4, 0x1042, 0x01_00_00)
            .mem32(1, 0x1000, false)
            .pin(1),
    ])
}

#[test]
fn bridges_get_bus_numbers_and_windows() {
    let bus = bridged();
    let w = Windows {
        io: Some(Window::new(PhysAddr(0x1000), 0x1_0000)),
        ..windows()
    };
    let funcs = enumerate(&bus, &w).unwrap();
    let found: Vec<_> = funcs
        .iter()
        .map(|f| (f.bdf().bus(), f.bdf().dev(), f.device_id()))
        .collect();
    assert_eq!(
        found,
        [
            (0, 0, 0x0008),
            (0, 1, 0x000c),
            (1, 0, 0x0010),
            (1, 2, 0x000c),
            (2, 3, 0x11e8),
            (0, 4, 0x1042)
        ]
    );

    let outer = funcs[1].bridge().unwrap();
    let inner = funcs[3].bridge().unwrap();
    assert_eq!((outer.secondary, outer.subordinate), (1, 2));
    assert_eq!((inner.secondary, inner.subordinate), (2, 2));
    assert_eq!(bus.get(1).regs[6] & 0x00ff_ffff, 0x0002_0100);
    assert_eq!(bus.get(3).regs[6] & 0x00ff_ffff, 0x0002_0201);

    let within = |b: &Bar, (base, size): (u64, u64)| {
        b.pci_addr >= base && b.pci_addr + b.size <= base + size
    };
    let (omem, imem) = (outer.mem_window.unwrap(), inner.mem_window.unwrap());
    assert_eq!(omem.0 % (1 << 20), 0);
    assert_eq!(omem.1 % (1 << 20), 0);
    assert!(imem.0 >= omem.0 && imem.0 + imem.1 <= omem.0 + omem.1);
    assert!(within(&funcs[2].bar(0).unwrap(), omem));
    assert!(!within(&funcs[2].bar(0).unwrap(), imem));
    assert!(within(&funcs[4].bar(0).unwrap(), imem));
    assert!(!within(&funcs[5].bar(1).unwrap(), omem));
    assert!(within(&funcs[4].bar(1).unwrap(), inner.io_window.unwrap()));
    assert_disjoint(&assigned_memory(&funcs));

    // Registers: memory base/limit in 1 MiB units, I/O in 4 KiB units, prefetchable closed,
    // decoding and bus mastering on.
    let m = bus.get(3);
    let last = imem.0 + imem.1 - 1;
    assert_eq!(
        m.regs[8],
        ((imem.0 >> 16) as u32 & 0xfff0) | ((last >> 16) as u32 & 0xfff0) << 16
    );
    let (io_base, io_size) = inner.io_window.unwrap();
    assert_eq!(
        m.regs[7] & 0xf0f0,
        ((io_base >> 8) as u32 & 0xf0) | (((io_base + io_size - 1) >> 8) as u32 & 0xf0) << 8
    );
    assert_eq!(m.regs[9], 0x0000_fff0);
    assert_eq!(funcs[3].command() & 0b111, 0b111);

    // INTx swizzle: 02:03.0 pin B -> (B + 3) = A at 01:02 -> (A + 2) = C at 00:01.
    assert_eq!(funcs[4].root_intx(), Some((1, IntxPin::C)));
    assert_eq!(funcs[2].root_intx(), Some((1, IntxPin::A)));
    assert_eq!(funcs[5].root_intx(), Some((4, IntxPin::A)));
    let router =
        |dev: u8, pin: IntxPin| Some(hal::IrqLine::new(32 + u32::from((dev + pin.index()) % 4)));
    assert_eq!(funcs[4].intx_line(&router).map(|l| l.number()), Some(35));
}

#[test]
fn a_bridge_window_that_does_not_fit_fails_its_subtree() {
    let bus = bridged();
    // 1 MiB + 4 KiB: the bridge needs 2 MiB (the edu BAR and the NVMe BAR, rounded).
    let w = Windows {
        mem32: Some(Window::new(PhysAddr(MEM32_BASE), 0x10_1000)),
        ..Windows::default()
    };
    let funcs = enumerate(&bus, &w).unwrap();
    assert!(funcs[1].bridge().unwrap().mem_window.is_none());
    assert!(matches!(
        funcs[2].bar_slot(0),
        BarSlot::Failed(_, PciError::WindowExhausted)
    ));
    assert!(matches!(
        funcs[4].bar_slot(0),
        BarSlot::Failed(_, PciError::WindowExhausted)
    ));
    assert!(funcs[5].bar(1).is_some());
    assert_eq!(bus.get(1).regs[8], 0x0000_fff0, "window closed");
}

#[test]
fn bus_numbers_are_limited_to_the_ecam_range() {
    let mut bus = bridged();
    bus.buses = 0..=1;
    let mut list: heapless::Vec<PciFunction<'_, FakeBus>, 8> = heapless::Vec::new();
    let report = enumerate_into(&bus, &windows(), &mut list).unwrap();
    assert_eq!(report.unnumbered_bridges, 1);
    assert_eq!(list.len(), 5);
    assert_eq!(list[3].bridge(), None);
}

#[test]
fn a_full_list_drops_the_rest_with_decoding_off() {
    let bus = q35();
    let mut list: heapless::Vec<PciFunction<'_, FakeBus>, 3> = heapless::Vec::new();
    let report = enumerate_into(&bus, &windows(), &mut list).unwrap();
    assert_eq!(report.dropped, 4);
    assert_eq!(list.len(), 3);
    assert_eq!(bus.get(3).reg(0x04) & 0b11, 0, "edu left undecoded");
}

#[test]
fn ecam_addresses_functions_and_ignores_uncovered_buses() {
    let mem: &'static mut [u32] = Box::leak(vec![0u32; 2 << 18].into_boxed_slice());
    let base = mem.as_mut_ptr() as usize;
    // SAFETY: `mem` is leaked heap memory of 2 MiB that lives for the rest of the program and
    // is only accessed through this handle and `probe` below, with volatile accesses.
    #[allow(unsafe_code)]
    let mmio = unsafe { hal::Mmio::new(base, PhysAddr(0x3000_0000), 2 << 20) };
    let probe = mmio.subregion(0, 2 << 20).unwrap();
    let ecam = Ecam::new(mmio, 4).unwrap();
    assert_eq!(ecam.bus_range(), 4..=5);
    let bdf = Bdf::new(5, 3, 2);
    ecam.write32(bdf, 0x10, 0xdead_beef);
    assert_eq!(
        probe.read32(1 << 20 | 3 << 15 | 2 << 12 | 0x10),
        0xdead_beef
    );
    assert_eq!(ecam.read16(bdf, 0x12), 0xdead);
    assert_eq!(ecam.read8(bdf, 0x11), 0xbe);
    assert_eq!(ecam.read32(Bdf::new(6, 0, 0), 0), u32::MAX);
    assert_eq!(ecam.read32(Bdf::new(3, 0, 0), 0), u32::MAX);
    ecam.write32(Bdf::new(6, 0, 0), 0, 0);
    assert_eq!(Bdf::try_new(0, 32, 0), None);
    assert_eq!(Bdf::new(1, 2, 3).ecam_offset(), 0x11_3000);

    // SAFETY: same leaked memory; a window that is not a whole number of buses.
    #[allow(unsafe_code)]
    let odd = unsafe { hal::Mmio::new(base, PhysAddr(0x3000_0000), 0x1000) };
    assert_eq!(Ecam::new(odd, 0).err(), Some(PciError::BadEcamWindow));
}

#[test]
fn stale_firmware_bus_numbers_do_not_misroute_the_scan() {
    // Firmware numbered the bridge at 00:02.0 with bus 1; it comes first in the model's
    // routing order, so unless it is closed it would answer for bus 1 while 00:01.0 is
    // scanned.
    let mut stale = FakeFn::bridge(2, 0);
    stale.regs[6] = 0x0001_0100;
    let bus = FakeBus::new(vec![
        stale,
        FakeFn::bridge(1, 0),
        FakeFn::endpoint(0, 0, 0x1111, 0x0001, 0x01_08_02).under(1),
        FakeFn::endpoint(0, 0, 0x2222, 0x0002, 0x01_08_02).under(0),
    ]);
    let funcs = enumerate(&bus, &windows()).unwrap();
    let found: Vec<_> = funcs
        .iter()
        .map(|f| (f.bdf().bus(), f.bdf().dev(), f.vendor_id()))
        .collect();
    assert_eq!(
        found,
        [
            (0, 1, 0x1b36),
            (1, 0, 0x1111),
            (0, 2, 0x1b36),
            (2, 0, 0x2222)
        ]
    );
    assert_eq!(bus.get(0).regs[6] & 0x00ff_ffff, 0x0002_0200);
    assert_eq!(bus.get(1).regs[6] & 0x00ff_ffff, 0x0001_0100);
}

/// A small xorshift generator, so the randomized test needs no dependency and is repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random BARs on a random endpoint.
fn random_endpoint(rng: &mut Rng, dev: u8) -> FakeFn {
    let mut f = FakeFn::endpoint(dev, 0, 0x1234, rng.below(0xffff) as u16, 0x01_80_00);
    let mut slot = 0;
    while slot < 6 {
        match rng.below(5) {
            0 => f = f.mem32(slot, 1 << (4 + rng.below(19)), rng.below(2) == 0),
            1 if slot < 5 => {
                f = f.mem64(slot, 1 << (4 + rng.below(21)), rng.below(2) == 0);
                slot += 1;
            }
            2 => f = f.io(slot, 1 << (2 + rng.below(7))),
            _ => {}
        }
        slot += 1;
    }
    f
}

#[test]
fn random_topologies_keep_every_assignment_invariant() {
    let (mut assigned, mut behind_bridges, mut failed) = (0, 0, 0);
    for seed in 1..200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut fns = Vec::new();
        for dev in 0..(1 + rng.below(6)) as u8 {
            if rng.below(3) == 0 {
                let b = fns.len();
                fns.push(FakeFn::bridge(dev, 0));
                for child in 0..rng.below(4) as u8 {
                    if rng.below(4) == 0 {
                        let b2 = fns.len();
                        fns.push(FakeFn::bridge(child, 0).under(b));
                        for grandchild in 0..rng.below(3) as u8 {
                            fns.push(random_endpoint(&mut rng, grandchild).under(b2));
                        }
                    } else {
                        fns.push(random_endpoint(&mut rng, child).under(b));
                    }
                }
            } else {
                fns.push(random_endpoint(&mut rng, dev));
            }
        }
        let bus = FakeBus::new(fns);
        let mem_size = 1 << (22 + rng.below(5));
        let mem = Window::new(PhysAddr(0x4000_0000 + (rng.below(64) << 20)), mem_size);
        let io = Window::new(PhysAddr(0x1000), 0x1000 << rng.below(4));
        let w = Windows {
            mem32: Some(mem),
            io: Some(io),
            ..Windows::default()
        };
        let mut list: heapless::Vec<PciFunction<'_, FakeBus>, 64> = heapless::Vec::new();
        enumerate_into(&bus, &w, &mut list).unwrap();

        // Every assigned block with the chain of bridges above it: those whose bus range
        // holds the function's bus.
        let ancestors = |i: usize| {
            let bus = list[i].bdf().bus();
            (0..list.len())
                .filter(|&a| {
                    list[a]
                        .bridge()
                        .is_some_and(|b| (b.secondary..=b.subordinate).contains(&bus))
                })
                .collect::<Vec<_>>()
        };
        let mut blocks: Vec<(bool, u64, u64, usize)> = Vec::new();
        for (i, f) in list.iter().enumerate() {
            for slot in 0..6 {
                match f.bar_slot(slot) {
                    BarSlot::Assigned(b) => {
                        let (win, len) = if b.kind.is_memory() {
                            (mem, b.size.max(MIN_MEM_BLOCK))
                        } else {
                            (io, b.size)
                        };
                        assert_eq!(b.pci_addr % len, 0, "seed {seed}: {b:x?}");
                        assert!(
                            b.pci_addr >= win.pci_base
                                && b.pci_addr + len <= win.pci_base + win.size
                        );
                        let reg = u64::from(f.config_read32(0x10 + 4 * slot as u16) & !0xf & !3);
                        assert_eq!(reg, b.pci_addr & 0xffff_fff0, "seed {seed}");
                        for a in ancestors(i) {
                            let info = list[a].bridge().unwrap();
                            let (base, size) = if b.kind.is_memory() {
                                info.mem_window
                            } else {
                                info.io_window
                            }
                            .expect("an assigned BAR behind a closed window");
                            assert!(
                                b.pci_addr >= base && b.pci_addr + len <= base + size,
                                "seed {seed}"
                            );
                        }
                        blocks.push((b.kind.is_memory(), b.pci_addr, len, i));
                        assigned += 1;
                        behind_bridges += usize::from(!ancestors(i).is_empty());
                    }
                    BarSlot::Failed(_, e) => {
                        assert_eq!(e, PciError::WindowExhausted, "seed {seed}");
                        failed += 1;
                    }
                    _ => {}
                }
            }
        }
        for (i, a) in blocks.iter().enumerate() {
            for b in &blocks[i + 1..] {
                if a.0 == b.0 {
                    assert!(
                        a.1 + a.2 <= b.1 || b.1 + b.2 <= a.1,
                        "seed {seed}: {a:x?} {b:x?}"
                    );
                }
            }
        }
        // Sibling bridge windows do not overlap, and BARs outside a bridge are outside its
        // window.
        for (i, f) in list.iter().enumerate() {
            let Some(info) = f.bridge() else { continue };
            for (mem_space, window) in [(true, info.mem_window), (false, info.io_window)] {
                let Some((base, size)) = window else { continue };
                for blk in blocks
                    .iter()
                    .filter(|b| b.0 == mem_space && !ancestors(b.3).contains(&i))
                {
                    assert!(blk.1 + blk.2 <= base || base + size <= blk.1, "seed {seed}");
                }
            }
        }
    }
    println!("{assigned} assigned, {behind_bridges} behind bridges, {failed} failed");
    assert!(assigned > 1000 && behind_bridges > 200 && failed > 0);
}

#[test]
fn list_size_stays_modest() {
    // The list is returned by value on a kernel stack; keep an eye on it.
    let size = core::mem::size_of::<FunctionList<'_, Ecam>>();
    println!(
        "FunctionList: {size} bytes, PciFunction: {}",
        core::mem::size_of::<PciFunction<'_, Ecam>>()
    );
    assert!(size <= 16 * 1024);
}

#[test]
fn functions_without_bars_keep_their_decoding_bits() {
    let mut lpc = FakeFn::endpoint(0x1f, 0, 0x8086, 0x2918, 0x06_01_00);
    lpc.regs[1] = 0x0000_0003;
    let mut stale = FakeFn::endpoint(2, 0, 0x1234, 0x0001, 0).mem32(0, 0x1000, false);
    stale.regs[1] = 0x0000_0003; // I/O on, but it has no I/O BARs: kept; memory from its BAR
    let bus = FakeBus::new(vec![lpc, stale]);
    let funcs = enumerate(&bus, &Windows::default()).unwrap();
    assert_eq!(funcs[1].command() & 0b11, 0b11);
    assert_eq!(
        funcs[0].command() & 0b11,
        0b01,
        "memory BAR unplaced: memory off, I/O kept"
    );
}

#[test]
fn port_config_addresses() {
    let a = |bus, dev, func, off| PortConfig::address(Bdf::new(bus, dev, func), off);
    assert_eq!(a(0, 0, 0, 0), Some(0x8000_0000));
    assert_eq!(a(1, 2, 3, 0x44), Some(0x8001_1344));
    assert_eq!(a(0xff, 0x1f, 7, 0xfc), Some(0x80ff_fffc));
    assert_eq!(a(0, 0, 0, 0x47), Some(0x8000_0044), "dword aligned");
    assert_eq!(a(0, 0, 0, 0x100), None, "mechanism #1 reaches 256 bytes");
}

std::thread_local! {
    /// The bus behind the fake mechanism #1 ports, and the address port's latch.
    static PORT_BUS: std::cell::RefCell<Option<FakeBus>> = const { std::cell::RefCell::new(None) };
    static PORT_LATCH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Decodes an address-port value the way a host bridge does.
fn latched() -> (Bdf, u16) {
    let a = PORT_LATCH.with(|l| l.get());
    assert!(a & 1 << 31 != 0, "enable bit clear: {a:#x}");
    let bdf = Bdf::new((a >> 16) as u8, (a >> 11) as u8, (a >> 8) as u8);
    (bdf, (a & 0xfc) as u16)
}

fn port_read(address: u32) -> u32 {
    PORT_LATCH.with(|l| l.set(address));
    let (bdf, off) = latched();
    PORT_BUS.with(|b| b.borrow().as_ref().unwrap().read32(bdf, off))
}

fn port_write(address: u32, value: u32) {
    PORT_LATCH.with(|l| l.set(address));
    let (bdf, off) = latched();
    PORT_BUS.with(|b| b.borrow().as_ref().unwrap().write32(bdf, off, value));
}

#[test]
fn port_config_enumerates_like_direct_access() {
    // The same machine through the ports and directly: same functions, same BARs, same
    // capabilities (all of q35()'s sit below 0x100).
    let direct = q35();
    let want: Vec<_> = enumerate(&direct, &windows())
        .unwrap()
        .iter()
        .map(|f| {
            (
                f.bdf(),
                f.vendor_id(),
                f.device_id(),
                f.summary().bars,
                f.msix_offset(),
            )
        })
        .collect();
    PORT_BUS.with(|b| *b.borrow_mut() = Some(q35()));
    let cfg = ConfigSpace::Ports(PortConfig::new(ConfigPorts {
        read: port_read,
        write: port_write,
    }));
    let got: Vec<_> = enumerate(&cfg, &windows())
        .unwrap()
        .iter()
        .map(|f| {
            (
                f.bdf(),
                f.vendor_id(),
                f.device_id(),
                f.summary().bars,
                f.msix_offset(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.len(), 7);
    // Past the first 256 bytes: all ones, and writes go nowhere.
    let before = PORT_BUS.with(|b| b.borrow().as_ref().unwrap().writes.borrow().len());
    assert_eq!(cfg.read32(Bdf::new(0, 2, 0), 0x100), u32::MAX);
    cfg.write32(Bdf::new(0, 2, 0), 0x100, 0);
    let after = PORT_BUS.with(|b| b.borrow().as_ref().unwrap().writes.borrow().len());
    assert_eq!(before, after);
}
