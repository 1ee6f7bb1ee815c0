//! Boot hand-over formats, parsed from byte slices with every length and offset checked, so a
//! missing or malformed block is an error the boot code can report instead of a wild read.
//!
//! - [`multiboot2`]: the information structure GRUB (BIOS or UEFI) hands an x86_64 kernel:
//!   command line, memory map, ACPI RSDP (old and new tags), EFI system table.
//! - [`fdt`]: the flattened device tree header (magic, size, block offsets), checked before a
//!   parser sees the blob.
//! - [`riscv_image`]: the 64-byte header of a RISC-V flat `Image` that U-Boot's `booti` reads
//!   (text offset, image size, flags, magic).
//!
//! `no_std`, no allocation, no `unsafe`: the kernel uses it at boot and xtask on the host (to
//! check the `Image` it writes), and its tests run on the host.
#![no_std]
#![forbid(unsafe_code)]

pub mod fdt;
pub mod multiboot2;
pub mod riscv_image;

fn u32_at(bytes: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(bytes: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}
