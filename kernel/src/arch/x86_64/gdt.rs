//! The long-mode GDTs and the TSSs that give the double-fault handler its own stack, one pair
//! per CPU (a TSS descriptor is marked busy when loaded, so CPUs cannot share one), built and
//! loaded with the `x86_64` crate's descriptor types and segment instructions.

use crate::arch::percpu::MAX_CPUS;
use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// Kernel code selector (same as the boot GDT's).
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
const KERNEL_DS: u16 = 0x10;
/// TSS selector.
const TSS_SEL: u16 = 0x18;
/// IST slot (1-based, as in the gate) used by the double-fault gate.
pub const DOUBLE_FAULT_IST: u8 = 1;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

/// Each CPU's double-fault stack.
static mut DOUBLE_FAULT_STACKS: [Stack; MAX_CPUS] =
    [const { Stack([0; IST_STACK_SIZE]) }; MAX_CPUS];

/// Each CPU's 64-bit task-state segment. Only the IST entries are used (no ring changes); the
/// crate's `new` leaves no I/O permission bitmap (its offset points past the segment limit).
static TSS: [Once<TaskStateSegment>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];

/// Each CPU's GDT: null, code64, data, its TSS (two slots).
static GDT: [Once<GlobalDescriptorTable>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];

/// Loads CPU `cpu`'s GDT with its TSS, reloads the segment registers and the task register.
///
/// # Safety
/// On CPU `cpu` (`cpu < MAX_CPUS`), once, before its interrupts are enabled. FS and GS are not
/// reloaded (the GS base stays).
pub unsafe fn init(cpu: usize) {
    // Only the address of the stacks is taken, no reference.
    let stacks = (&raw const DOUBLE_FAULT_STACKS) as u64;
    let stack_top = stacks + ((cpu + 1) * IST_STACK_SIZE) as u64;
    let tss = TSS[cpu].call_once(|| {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST) - 1] = VirtAddr::new(stack_top);
        tss
    });
    let gdt = GDT[cpu].call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let cs = gdt.append(Descriptor::kernel_code_segment());
        let ds = gdt.append(Descriptor::kernel_data_segment());
        let ts = gdt.append(Descriptor::tss_segment(tss));
        // The IDT gates and the boot code use these fixed selectors.
        assert!(cs.0 == KERNEL_CS && ds.0 == KERNEL_DS && ts.0 == TSS_SEL);
        gdt
    });
    gdt.load();
    let (cs, ds, ts) = (
        SegmentSelector(KERNEL_CS),
        SegmentSelector(KERNEL_DS),
        SegmentSelector(TSS_SEL),
    );
    // SAFETY:
    // 1. the GDT just loaded is a static that lives forever and holds flat 64-bit code/data
    //    descriptors at the same selectors as the boot GDT, so reloading CS/SS/DS/ES with them
    //    keeps the same flat segments;
    // 2. the TSS descriptor is valid (a static TSS of this CPU's own) and not busy: `init`
    //    runs once per CPU and no other CPU loads this CPU's TSS.
    unsafe {
        CS::set_reg(cs);
        SS::set_reg(ds);
        DS::set_reg(ds);
        ES::set_reg(ds);
        load_tss(ts);
    }
}
