//! The first instructions: from 32-bit protected mode (PVH or Multiboot2) to long mode.
//!
//! Both boot protocols enter `_start32` with paging off, flat 32-bit segments, `eax` = a
//! protocol magic (Multiboot2) and `ebx` = the physical address of the boot information
//! (PVH `hvm_start_info` or the Multiboot2 information structure). The stack pointer is
//! undefined. The code:
//!
//! 1. takes the boot stack and keeps `eax`/`ebx` in callee-untouched registers,
//! 2. clears `.bss` (the page tables live there),
//! 3. identity-maps the first 4 GiB with 2 MiB pages, the device hole 0xC000_0000.. uncached,
//! 4. enables PAE, EFER.LME and paging, loads a boot GDT and far-returns into 64-bit code,
//! 5. calls `x86_64_entry(magic, info)` on the boot stack.
//!
//! The Rust side replaces the GDT (adding a TSS) and splits the stack's guard page out of the map.
//!
//! This stays assembly (no `x86_64` crate here): it runs in 32-bit protected mode before long
//! mode exists, so its CR0/CR4/EFER writes and the boot GDT cannot be 64-bit Rust code.

use core::arch::global_asm;

/// Multiboot2 header magic (what GRUB looks for).
const MB2_HEADER_MAGIC: u32 = 0xE852_50D6;
/// Multiboot2 header length: 16 bytes of fixed fields plus the 8-byte end tag.
const MB2_HEADER_LEN: u32 = 24;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note type QEMU's PVH loader looks for.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Present | writable | 2 MiB page.
const PDE_LARGE: u32 = 0x83;
/// Page-level cache disable | write-through.
const PDE_UNCACHED: u32 = 0x18;
/// First 2 MiB page of the device hole (0xC000_0000 >> 21).
const HOLE_FIRST_PDE: u32 = 0xC000_0000 >> 21;

global_asm!(
    // ---- Multiboot2 header: magic, architecture (0 = i386 protected mode), length, checksum,
    // then the end tag. GRUB loads the ELF by its program headers and enters at `_start32`.
    ".section .multiboot2, \"a\"",
    ".balign 8",
    ".long {mb2_magic}",
    ".long 0",
    ".long {mb2_len}",
    ".long {mb2_sum}",
    ".short 0",
    ".short 0",
    ".long 8",
    // ---- PVH note: namesz, descsz, type, "Xen\0", then the 32-bit entry as an 8-byte value.
    ".section .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 8",
    ".long {xen_type}",
    ".asciz \"Xen\"",
    ".balign 4",
    ".quad _start32",
    ".balign 4",
    // ---- 32-bit entry.
    ".section .text.boot, \"ax\"",
    ".code32",
    ".global _start32",
    "_start32:",
    "cli",
    "cld",
    "mov esp, offset __stack_top",
    "mov esi, eax", // boot protocol magic
    "mov ebp, ebx", // boot information
    // Clear .bss.
    "mov edi, offset __bss_start",
    "mov ecx, offset __bss_end",
    "sub ecx, edi",
    "xor eax, eax",
    "rep stosb",
    // PML4[0] -> PDPT; PDPT[0..4] -> the four page directories.
    "mov eax, offset X86_BOOT_PDPT",
    "or eax, 3",
    "mov dword ptr [X86_BOOT_PML4], eax",
    "mov eax, offset X86_BOOT_PD",
    "or eax, 3",
    "mov dword ptr [X86_BOOT_PDPT], eax",
    "add eax, 4096",
    "mov dword ptr [X86_BOOT_PDPT + 8], eax",
    "add eax, 4096",
    "mov dword ptr [X86_BOOT_PDPT + 16], eax",
    "add eax, 4096",
    "mov dword ptr [X86_BOOT_PDPT + 24], eax",
    // 2048 PD entries of 2 MiB each; from 0xC000_0000 on, uncached.
    "xor ecx, ecx",
    "2:",
    "mov eax, ecx",
    "shl eax, 21",
    "or eax, {pde_large}",
    "cmp ecx, {hole_first}",
    "jb 3f",
    "or eax, {pde_uncached}",
    "3:",
    "mov dword ptr [X86_BOOT_PD + ecx * 8], eax",
    "inc ecx",
    "cmp ecx, 2048",
    "jne 2b",
    // Paging structures, PAE, long mode enable, paging.
    "mov eax, offset X86_BOOT_PML4",
    "mov cr3, eax",
    "mov eax, cr4",
    "or eax, 1 << 5",
    "mov cr4, eax",
    "mov ecx, 0xC0000080",
    "rdmsr",
    "or eax, 1 << 8",
    "wrmsr",
    "mov eax, cr0",
    "or eax, 0x80000001",
    "mov cr0, eax",
    // Now in compatibility mode: load the boot GDT and far-return into the 64-bit code segment.
    "lgdt [x86_boot_gdt_ptr]",
    "push 0x08",
    "mov eax, offset x86_long_mode",
    "push eax",
    "retf",
    ".code64",
    "x86_long_mode:",
    "mov ax, 0x10",
    "mov ds, ax",
    "mov es, ax",
    "mov ss, ax",
    "mov fs, ax",
    "mov gs, ax",
    "mov rsp, offset __stack_top",
    "mov edi, esi", // magic, zero-extended
    "mov esi, ebp", // info, zero-extended
    "xor ebp, ebp",
    "call x86_64_entry",
    "5:",
    "cli",
    "hlt",
    "jmp 5b",
    // ---- Boot GDT: null, 64-bit code (0x08), data (0x10).
    ".section .rodata.boot, \"a\"",
    ".balign 8",
    "x86_boot_gdt:",
    ".quad 0",
    ".quad 0x00AF9A000000FFFF",
    ".quad 0x00CF92000000FFFF",
    "x86_boot_gdt_ptr:",
    ".short x86_boot_gdt_ptr - x86_boot_gdt - 1",
    ".long x86_boot_gdt",
    ".text",
    mb2_magic = const MB2_HEADER_MAGIC,
    mb2_len = const MB2_HEADER_LEN,
    mb2_sum = const 0u32.wrapping_sub(MB2_HEADER_MAGIC).wrapping_sub(MB2_HEADER_LEN),
    xen_type = const XEN_ELFNOTE_PHYS32_ENTRY,
    pde_large = const PDE_LARGE,
    pde_uncached = const PDE_UNCACHED,
    hole_first = const HOLE_FIRST_PDE,
);
