//! The identity map built by the entry code, and the few changes made to it later.
//!
//! The entry code maps 0..4 GiB with 2 MiB pages (the device hole 0xC000_0000.. uncached).
//! Later, with only the boot CPU running and before interrupts are enabled:
//! - [`unmap_stack_guard`] replaces the 2 MiB page holding the stack guard page by a 4 KiB page
//!   table that leaves the guard unmapped, so a stack overflow faults (and double-faults onto
//!   the IST stack) instead of silently overwriting `.bss`;
//! - [`set_uncached`] marks device windows found below the hole (the PCI ECAM) uncached;
//! - [`unmap_guard_pages`] does the same as `unmap_stack_guard` for the guard pages under the
//!   other CPUs' stacks (one 2 MiB region holds them all).

/// Present | writable.
const PTE_RW: u64 = 0x3;
/// 2 MiB page.
const PDE_LARGE: u64 = 0x80;
/// Page-level write-through | cache disable.
const PTE_UNCACHED: u64 = 0x18;
const PAGE_2M: u64 = 2 << 20;

/// One 4 KiB paging structure.
#[repr(C, align(4096))]
pub struct PageTable([u64; 512]);

// The entry code fills these (by symbol) after clearing .bss; the Rust code below changes them
// only while no other code runs.
#[unsafe(no_mangle)]
static mut X86_BOOT_PML4: PageTable = PageTable([0; 512]);
#[unsafe(no_mangle)]
static mut X86_BOOT_PDPT: PageTable = PageTable([0; 512]);
#[unsafe(no_mangle)]
static mut X86_BOOT_PD: [PageTable; 4] = [const { PageTable([0; 512]) }; 4];
/// 4 KiB pages for the 2 MiB region that holds the stack guard page.
static mut STACK_PT: PageTable = PageTable([0; 512]);
/// 4 KiB pages for the 2 MiB region of the other CPUs' stacks and their guard pages.
static mut AP_STACKS_PT: PageTable = PageTable([0; 512]);

unsafe extern "C" {
    static __stack_guard: u8;
}

/// Reloads CR3, dropping every cached translation.
fn flush_tlb() {
    x86_64::instructions::tlb::flush_all();
}

/// Pointer to the page-directory entry for the 2 MiB page containing `addr` (below 4 GiB).
fn pde(addr: u64) -> *mut u64 {
    let index = (addr / PAGE_2M) as usize;
    let table = index / 512;
    let entry = index % 512;
    // SAFETY: `table < 4` because callers only pass addresses below 4 GiB; the place
    // expression only computes an address inside the static, no reference is created.
    unsafe { (&raw mut X86_BOOT_PD[table].0[entry]).cast() }
}

/// Unmaps the 4 KiB page under the boot stack.
///
/// # Safety
/// Boot CPU only, once, before anything else uses the page tables concurrently.
pub unsafe fn unmap_stack_guard() {
    // A linker symbol: only its address is taken.
    let guard = (&raw const __stack_guard) as u64;
    let region = guard & !(PAGE_2M - 1);
    let table = &raw mut STACK_PT;
    for i in 0..512u64 {
        let page = region + i * 4096;
        let entry = if page == guard { 0 } else { page | PTE_RW };
        // SAFETY: `i < 512`; STACK_PT is not yet referenced by any paging structure.
        unsafe { (*table).0[i as usize] = entry };
    }
    // SAFETY: boot CPU only (caller's contract). The new table maps every 4 KiB page of the
    // region to the same address the 2 MiB page did (with the same rights), except the guard,
    // which nothing uses; so the switch is invisible to running code whichever translation the
    // TLB holds until the flush.
    unsafe { pde(region).write_volatile(table as u64 | PTE_RW) };
    flush_tlb();
}

/// Replaces the 2 MiB page at `region` (2 MiB aligned, below 4 GiB) by 4 KiB pages that map the
/// same memory except the pages at `guards`, left unmapped (the other CPUs' stack guards).
/// Returns false, changing nothing, when that 2 MiB page was split already (it holds the boot
/// stack's guard) or `region` is not 2 MiB aligned.
///
/// # Safety
/// Boot CPU only, once, before the other CPUs start and with nothing else changing the page
/// tables; `region` is RAM of the kernel image, and nothing uses the pages at `guards`.
pub unsafe fn unmap_guard_pages(region: u64, guards: &[u64]) -> bool {
    if !region.is_multiple_of(PAGE_2M) || region >= 1 << 32 {
        return false;
    }
    let p = pde(region);
    // SAFETY: `region` is below 4 GiB, so `p` points into the page directories; boot CPU only.
    let old = unsafe { p.read_volatile() };
    if old & PDE_LARGE == 0 {
        return false;
    }
    let table = &raw mut AP_STACKS_PT;
    for i in 0..512u64 {
        let page = region + i * 4096;
        let entry = if guards.contains(&page) {
            0
        } else {
            page | PTE_RW
        };
        // SAFETY: `i < 512`; AP_STACKS_PT is not yet referenced by any paging structure.
        unsafe { (*table).0[i as usize] = entry };
    }
    // SAFETY: boot CPU only, no other CPU running (caller's contract). The new table maps every
    // 4 KiB page of the region to the same address as the 2 MiB page did (with the same rights)
    // except the guards, which nothing uses; the switch is invisible to running code.
    unsafe { p.write_volatile(table as u64 | PTE_RW) };
    flush_tlb();
    true
}

/// Marks the 2 MiB pages overlapping `base..base + len` (below 4 GiB) uncached.
///
/// # Safety
/// Boot CPU only, with nothing else changing the page tables; the range must hold devices, not
/// RAM that is in use as cacheable memory (and not the 2 MiB region of the stack guard).
pub unsafe fn set_uncached(base: u64, len: u64) {
    let end = base.saturating_add(len).min(1 << 32);
    let mut addr = base & !(PAGE_2M - 1);
    while addr < end {
        let p = pde(addr);
        // SAFETY: `addr` is below 4 GiB so `p` points into the page directories; boot CPU only.
        unsafe {
            let old = p.read_volatile();
            if old & PDE_LARGE != 0 {
                p.write_volatile(old | PTE_UNCACHED);
            }
        }
        addr += PAGE_2M;
    }
    flush_tlb();
}
