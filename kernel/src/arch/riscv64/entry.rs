//! The first instructions: Image header, hart lottery, Sv39 paging, jump to the higher half,
//! stack, BSS, FPU, then [`super::riscv64_entry`].
//!
//! OpenSBI jumps to physical 0x8020_0000 in S-mode with the MMU off, `a0` = hart id and
//! `a1` = device tree (physical). That first page (`.boot` in `linker/riscv64.ld`) is linked at
//! its physical address; the rest of the kernel runs at `KERNEL_OFFSET + physical`.
//!
//! The boot page table is static (no code builds it): 256 identity gigapages cover physical
//! 0..256 GiB (devices, RAM, PCI windows), and entries 508..511 map the top 4 GiB of the
//! address space (0xffff_ffff_0000_0000..) to physical 0..4 GiB, which holds the kernel image.

use core::arch::global_asm;

/// Kernel virtual address minus physical address, for everything linked in the higher half.
pub const KERNEL_OFFSET: usize = 0xffff_ffff_0000_0000;

/// Physical memory below this is identity-mapped by the boot page table.
pub const IDENTITY_LIMIT: u64 = 256 << 30;

global_asm!(
    r#"
    .option push
    .option arch, +a, +f, +d
    .section .text.boot, "ax"
    .globl _start
    .option push
    .option norvc
_start:
    /* RISC-V Linux Image header (64 bytes); code0 jumps over it. */
    j       1f                      /* code0 */
    .word   0                       /* code1 */
    .dword  __image_text_offset     /* text_offset: KERNEL_PHYS - RAM base (linker script) */
    .dword  __image_size            /* image_size: load address to end of .bss and stack */
    .dword  0                       /* flags: little endian */
    .word   2                       /* version 0.2 */
    .word   0                       /* res1 */
    .dword  0                       /* res2 */
    .ascii  "RISCV\0\0\0"           /* magic (deprecated) */
    .ascii  "RSC\x05"               /* magic2 */
    .word   0                       /* res3 */
1:
    .option pop
    csrw    sie, zero
    csrci   sstatus, 2
    lla     t0, 3f
    csrw    stvec, t0

    /* Only the first hart to get here boots; the others park. */
    lla     t0, boot_lottery
    li      t1, 1
    amoadd.w t1, t1, (t0)
    bnez    t1, 3f

    /* The kernel runs only where it is linked (KERNEL_PHYS): a boot loader that placed it
       elsewhere (a RAM base other than the header's text_offset assumes) gets a message on the
       SBI console and a shutdown, not a hang. */
    lla     t0, _start
    lla     t1, 7f
    ld      t1, 0(t1)
    bne     t0, t1, 8f

    mv      s0, a0
    mv      s1, a1

    /* satp = Sv39 | root PPN; the code here stays mapped (identity). */
    lla     t0, boot_page_table
    srli    t0, t0, 12
    li      t1, 8 << 60
    or      t0, t0, t1
    sfence.vma
    csrw    satp, t0
    sfence.vma
    csrr    t1, satp
    bne     t0, t1, 3f              /* no Sv39: nothing to run on */

    lla     t0, 2f
    ld      t0, 0(t0)
    jr      t0

    .balign 8
2:
    .dword  boot_high_entry

    .balign 4
3:
    wfi
    j       3b

    .balign 8
7:
    .dword  _start
8:
    lla     t2, 11f
9:
    lbu     a0, 0(t2)
    beqz    a0, 10f
    li      a7, 1                   /* legacy console_putchar */
    ecall
    addi    t2, t2, 1
    j       9b
10:
    li      a7, 0x53525354          /* SRST: shutdown, system failure */
    li      a6, 0
    li      a0, 0
    li      a1, 1
    ecall
    j       3b
11:
    .asciz  "\r\nboot stopped: the kernel was not loaded at its link address 0x80200000 (the Image header's text_offset assumes RAM at 0x80000000; rebuild the medium with cargo xtask image --boot uboot --ram-base <your RAM base>)\r\n"
    .balign 4

    .section .data.boot, "aw"
    .balign 4
boot_lottery:
    .word   0

    .section .data.boot.page_table, "aw"
    .balign 4096
boot_page_table:
    /* PTE flags: V R W X A D. A gigapage's PPN is (gib << 18), shifted into place by 10. */
    .set    gib, 0
    .rept   256
    .dword  (gib << 28) | 0xcf
    .set    gib, gib + 1
    .endr
    .rept   252
    .dword  0
    .endr
    .set    gib, 0
    .rept   4
    .dword  (gib << 28) | 0xcf
    .set    gib, gib + 1
    .endr

    /* Higher half from here on. */
    .section .text, "ax"
    .balign 4
boot_high_entry:
    la      sp, __stack_top
    mv      tp, zero
    mv      gp, zero

    la      t0, __bss_start
    la      t1, __bss_end
4:
    bgeu    t0, t1, 5f
    sd      zero, 0(t0)
    addi    t0, t0, 8
    j       4b
5:
    /* sstatus.FS = Initial: Rust code may use the FP registers. */
    li      t0, 1 << 13
    csrs    sstatus, t0
    fscsr   zero

    mv      a0, s0
    mv      a1, s1
    call    riscv64_entry
6:
    wfi
    j       6b
    .option pop
"#
);
