//! What the boot loader hands over: the PVH `hvm_start_info` (QEMU `-kernel`) or the Multiboot2
//! information structure (GRUB). Both give a command line and may give the ACPI RSDP.

use super::acpi::phys_bytes;
use spin::Once;

/// `hvm_start_info.magic`.
const PVH_MAGIC: u32 = 0x336E_C578;
/// `eax` at a Multiboot2 entry.
const MB2_BOOT_MAGIC: u32 = 0x36D7_6289;
const MB2_TAG_END: u32 = 0;
const MB2_TAG_CMDLINE: u32 = 1;
const MB2_TAG_ACPI_OLD: u32 = 14;
const MB2_TAG_ACPI_NEW: u32 = 15;
/// Longest command line kept (longer ones are cut).
const CMDLINE_MAX: usize = 1024;
/// Largest Multiboot2 information structure walked.
const MB2_MAX_LEN: u32 = 1 << 20;

/// The parts of the hand-over the kernel uses.
#[derive(Debug, Clone, Copy)]
pub struct Handoff {
    /// "pvh", "multiboot2" or "unknown".
    pub protocol: &'static str,
    /// The kernel command line, "" if none.
    pub cmdline: &'static str,
    /// Physical address of the ACPI RSDP if the loader gave one.
    pub rsdp: Option<u64>,
}

/// The command line, copied out of loader memory so nothing later can overwrite it.
static CMDLINE: Once<heapless::String<CMDLINE_MAX>> = Once::new();

/// Copies the NUL-terminated string at `addr` (up to [`CMDLINE_MAX`] bytes, valid UTF-8 prefix).
fn keep_cmdline(addr: u64, limit: usize) -> &'static str {
    let kept = CMDLINE.call_once(|| {
        let mut s = heapless::String::new();
        // SAFETY: the loader put the command line there; a read past its NUL stays in memory
        // below 4 GiB (checked by `phys_bytes`), and only the bytes before the NUL are used.
        let Some(bytes) = (unsafe { phys_bytes(addr, limit.min(CMDLINE_MAX - 1)) }) else {
            return s;
        };
        let bytes = bytes.split(|&b| b == 0).next().unwrap_or(&[]);
        let text = match core::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        };
        // Cannot fail: `text` is shorter than the capacity.
        let _ = s.push_str(text.trim());
        s
    });
    kept.as_str()
}

/// Reads the hand-over given `eax` (`magic`) and `ebx` (`info`) at entry.
pub fn parse(magic: u32, info: u32) -> Handoff {
    let info = u64::from(info);
    // SAFETY: `ebx` points at the loader's boot information under both protocols.
    let pvh = unsafe { phys_bytes(info, 40) };
    if magic != MB2_BOOT_MAGIC
        && let Some(start) = pvh.filter(|s| read_u32(s, 0) == Some(PVH_MAGIC))
    {
        let cmdline_paddr = read_u64(start, 24).unwrap_or(0);
        let rsdp_paddr = read_u64(start, 32).unwrap_or(0);
        let cmdline = if cmdline_paddr != 0 {
            keep_cmdline(cmdline_paddr, CMDLINE_MAX)
        } else {
            ""
        };
        return Handoff {
            protocol: "pvh",
            cmdline,
            rsdp: (rsdp_paddr != 0).then_some(rsdp_paddr),
        };
    }
    if magic == MB2_BOOT_MAGIC {
        return parse_multiboot2(info);
    }
    Handoff {
        protocol: "unknown",
        cmdline: "",
        rsdp: None,
    }
}

fn parse_multiboot2(info: u64) -> Handoff {
    let mut handoff = Handoff {
        protocol: "multiboot2",
        cmdline: "",
        rsdp: None,
    };
    // SAFETY: the Multiboot2 information structure starts with its total size.
    let Some(total) = (unsafe { phys_bytes(info, 8) }).and_then(|h| read_u32(h, 0)) else {
        return handoff;
    };
    let total = total.min(MB2_MAX_LEN);
    // SAFETY: the structure is `total` bytes of loader memory.
    let Some(all) = (unsafe { phys_bytes(info, total as usize) }) else {
        return handoff;
    };
    let mut off = 8usize;
    while off + 8 <= all.len() {
        let (Some(kind), Some(size)) = (read_u32(all, off), read_u32(all, off + 4)) else {
            break;
        };
        let size = size as usize;
        if kind == MB2_TAG_END || size < 8 || off + size > all.len() {
            break;
        }
        let body = info + off as u64 + 8;
        match kind {
            MB2_TAG_CMDLINE => handoff.cmdline = keep_cmdline(body, size - 8),
            MB2_TAG_ACPI_NEW => handoff.rsdp = Some(body),
            MB2_TAG_ACPI_OLD => handoff.rsdp = handoff.rsdp.or(Some(body)),
            _ => {}
        }
        off += size.next_multiple_of(8);
    }
    handoff
}

fn read_u32(bytes: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(off..off + 4)?.try_into().ok()?,
    ))
}

fn read_u64(bytes: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(off..off + 8)?.try_into().ok()?,
    ))
}
