//! The long-mode GDT and the TSS that gives the double-fault handler its own stack.

use core::arch::asm;

/// Kernel code selector (same as the boot GDT's).
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
const KERNEL_DS: u16 = 0x10;
/// TSS selector.
const TSS_SEL: u16 = 0x18;
/// IST slot (1-based) used by the double-fault gate.
pub const DOUBLE_FAULT_IST: u8 = 1;

const IST_STACK_SIZE: usize = 16 * 1024;

/// The 64-bit task-state segment. Only the IST entries are used (no ring changes).
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; IST_STACK_SIZE]);

static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    // No I/O permission bitmap: the offset points past the segment limit.
    iomap_base: size_of::<Tss>() as u16,
};

/// null, code64, data, TSS (two slots).
static mut GDT: [u64; 5] = [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0, 0];

#[repr(C, packed(2))]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Loads the GDT with a TSS, reloads the segment registers and the task register.
///
/// # Safety
/// Boot CPU only, once, before interrupts are enabled.
pub unsafe fn init() {
    let stack_top = (&raw const DOUBLE_FAULT_STACK) as u64 + IST_STACK_SIZE as u64;
    let tss = &raw mut TSS;
    // SAFETY: boot CPU only and nothing uses the TSS yet (caller's contract); the field is
    // written through a raw pointer without creating a reference to the packed struct.
    unsafe { (&raw mut (*tss).ist[DOUBLE_FAULT_IST as usize - 1]).write_unaligned(stack_top) };

    let base = tss as u64;
    let limit = (size_of::<Tss>() - 1) as u64;
    let low = (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (0x89 << 40) // present, 64-bit TSS (available)
        | (((limit >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56);
    let high = base >> 32;
    let gdt = &raw mut GDT;
    // SAFETY: as above, no one else touches the GDT yet.
    unsafe {
        (*gdt)[3] = low;
        (*gdt)[4] = high;
    }
    let pointer = DescriptorPointer {
        limit: (size_of::<[u64; 5]>() - 1) as u16,
        base: gdt as u64,
    };
    // SAFETY:
    // 1. the GDT is a static that lives forever and holds code/data descriptors at the same
    //    selectors as the boot GDT, so reloading CS/SS/DS with them keeps flat 64-bit segments;
    // 2. the far return pops exactly the two values pushed before it;
    // 3. the TSS descriptor is valid and not busy (loaded once).
    unsafe {
        asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ss, {ds:x}",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "ltr {tss:x}",
            ptr = in(reg) &pointer,
            cs = in(reg) u64::from(KERNEL_CS),
            ds = in(reg) KERNEL_DS,
            tss = in(reg) TSS_SEL,
            tmp = out(reg) _,
        );
    }
}
