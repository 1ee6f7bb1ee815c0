//! The device registry: every attached disk and every partition found on it, under a stable
//! Linux-style name, in one bounded static table (no heap).
//!
//! Names: the virtio disk is `vda`; AHCI disks are `sda`, `sdb`, ... in port order (one per
//! port with a disk); NVMe namespaces are `nvme0n1`, `nvme0n2`, ... by their position among the
//! attached namespaces in namespace-id order (as Linux numbers a controller's namespaces found
//! at one scan: namespaces 2 and 3 are `nvme0n1` and `nvme0n2`). A partition is its disk's
//! name plus its number, with a `p` between when the disk's name ends in a digit (`vda1`,
//! `sda5`, `nvme0n1p2`) and always on a mapped device (`msp1`, `dm-0p2`, as kpartx names
//! them); numbers are Linux's (MBR slots 1-4, logical partitions from 5, GPT entry index + 1).
//!
//! [`init`] runs once at boot, after interrupts are on: it registers the disks, scans each for
//! an MBR or GPT table (`blk::partition::scan`), registers every partition accepted as a
//! `blk::stack::Linear` window of its disk, logs every table problem (a damaged primary GPT
//! replaced by the backup, refused entries) and prints the table. A disk whose table is bad
//! stays registered and usable whole. Then the mapped devices of the command line
//! (`dm=<name>:<table>`, [`super::dm`]) are created over the registered devices and registered
//! in turn (also later, through `dm::create`), each scanned for a partition table as a disk
//! is ([`scan_mapped`]): its partitions are windows of it, usable like any other.

use core::fmt::Write;
use core::sync::atomic::{AtomicUsize, Ordering};

use blk::mem::DmaRegion;
use blk::partition::{self, GptDamage, PartEntry, PartKind, Refusal, ScanError, Scheme};
use blk::stack::Linear;
use blk::{BlkError, BlkStats, BlockDevice, Op, Queue, QueueLimits, Wait, submit_bio_wait};
use hal::DmaBuf;
use spin::{Mutex, Once};

use super::{IO_SET, ahci, cpu_ctx, nvme, virtio};

/// Devices (disks and partitions) registered at most.
pub const MAX_DEVICES: usize = 48;
/// Partitions registered at most, over all disks.
pub const MAX_PARTITIONS: usize = 32;
/// Bytes of a device name.
pub const NAME_BYTES: usize = 16;

/// A device name (`vda`, `nvme0n1p2`).
pub type Name = heapless::String<NAME_BYTES>;

/// What a registered device is.
#[derive(Clone, Copy, Debug)]
pub enum DevKind {
    /// A whole disk of this driver kind.
    Disk(super::DiskKind),
    /// A partition: a window of a registered disk.
    Partition(PartInfo),
    /// A mapped (device-mapper) device: its index among them (`super::dm`).
    Mapped(usize),
}

/// Where a partition lies and what its table says.
#[derive(Clone, Copy, Debug)]
pub struct PartInfo {
    /// The disk's index in the registry ([`get`]).
    pub disk: usize,
    /// First 512-byte sector on the disk.
    pub start: u64,
    /// Its table entry (number, MBR type or GPT type GUID and name).
    pub entry: PartEntry,
}

/// One registered device.
pub struct Device {
    /// Its name.
    pub name: Name,
    /// The device to submit bios to.
    pub dev: &'static dyn BlockDevice,
    /// Disk or partition.
    pub kind: DevKind,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// The queue limits bios to this device meet in the end (a partition's are its disk's).
    pub limits: QueueLimits,
    /// Model, where the driver reads one (AHCI); empty otherwise.
    pub model: heapless::String<40>,
    /// Serial number, where the driver reads one (AHCI, NVMe); empty otherwise.
    pub serial: heapless::String<20>,
    /// The device's own counters (a disk's request queue, a partition's remapping).
    pub stats: &'static BlkStats,
    /// The counters of the request queue that serves it in the end (a partition's disk's).
    pub queue_stats: &'static BlkStats,
}

static DEVICES: [Once<Device>; MAX_DEVICES] = [const { Once::new() }; MAX_DEVICES];
/// Slots of [`DEVICES`] taken (filled in order, at boot only).
static COUNT: AtomicUsize = AtomicUsize::new(0);
static PARTS: [Once<Linear>; MAX_PARTITIONS] = [const { Once::new() }; MAX_PARTITIONS];
static PART_COUNT: AtomicUsize = AtomicUsize::new(0);
static DONE: Once<()> = Once::new();
/// What the scan found on each disk, by registry index.
static TABLES: [Once<TableNote>; MAX_DEVICES] = [const { Once::new() }; MAX_DEVICES];

/// What the partition scan found on a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableNote {
    /// Which table.
    pub scheme: Scheme,
    /// Partitions accepted (registered unless a table was full).
    pub accepted: usize,
    /// Entries refused (each logged with the reason).
    pub refused: usize,
    /// GPT: the primary copy was damaged (why) and the backup was used.
    pub primary_damage: Option<GptDamage>,
}

/// The partition table found on the disk at registry index `index` (`None`: not scanned, no
/// table, or an unusable one).
pub fn table(index: usize) -> Option<&'static TableNote> {
    TABLES.get(index).and_then(Once::get)
}

/// The index of the device called `name`.
pub fn index_of(name: &str) -> Option<usize> {
    devices().position(|d| d.name == name)
}

/// Every registered device, disks each followed by their partitions.
pub fn devices() -> impl Iterator<Item = &'static Device> {
    DEVICES[..COUNT.load(Ordering::Acquire)]
        .iter()
        .filter_map(Once::get)
}

/// The device registered at `index`.
pub fn get(index: usize) -> Option<&'static Device> {
    DEVICES.get(index).and_then(Once::get)
}

/// The device called `name` (`registry::find("vda1")`).
pub fn find(name: &str) -> Option<&'static Device> {
    devices().find(|d| d.name == name)
}

/// The partitions of the disk called `disk`, in number order.
pub fn partitions_of(disk: &str) -> impl Iterator<Item = &'static Device> + '_ {
    let index = index_of(disk);
    devices().filter(move |d| matches!(d.kind, DevKind::Partition(p) if Some(p.disk) == index))
}

fn register(d: Device) -> Option<usize> {
    let i = COUNT.load(Ordering::Relaxed);
    if i == MAX_DEVICES {
        defmt::error!(
            "registry: {=str} not registered: the table holds {=usize} devices",
            d.name.as_str(),
            MAX_DEVICES
        );
        return None;
    }
    DEVICES[i].call_once(|| d);
    COUNT.store(i + 1, Ordering::Release);
    Some(i)
}

fn name(args: core::fmt::Arguments<'_>) -> Name {
    let mut n = Name::new();
    let _ = n.write_fmt(args);
    n
}

/// `s` cut to what fits in `N` bytes (at a character boundary).
fn clipped<const N: usize>(s: &str) -> heapless::String<N> {
    let mut t = heapless::String::new();
    for c in s.chars() {
        if t.push(c).is_err() {
            break;
        }
    }
    t
}

/// Registers a disk over its request queue.
fn disk<const D: usize>(
    n: Name,
    kind: super::DiskKind,
    q: &'static Queue<D>,
    model: &str,
    serial: &str,
) -> Option<usize> {
    let dev: &'static dyn BlockDevice = q;
    register(Device {
        name: n,
        dev,
        kind: DevKind::Disk(kind),
        sectors: dev.capacity(),
        block_size: dev.logical_block_size(),
        limits: *q.limits(),
        model: clipped(model),
        serial: clipped(serial),
        stats: q.stats(),
        queue_stats: q.stats(),
    })
}

/// Registers every attached disk and the partitions on each, then prints the table. Runs
/// once (later calls do nothing); interrupts must be on (the tables are read from the disks).
pub fn init() {
    DONE.call_once(|| {
        let mut disks = heapless::Vec::<usize, MAX_DEVICES>::new();
        if let Some(d) = virtio::disk() {
            push(
                &mut disks,
                disk(
                    name(format_args!("vda")),
                    super::DiskKind::Virtio,
                    d.queue,
                    "",
                    "",
                ),
            );
        }
        for (k, d) in ahci::disks().enumerate() {
            let (model, serial) = d.hw.model_serial();
            let letter = (b'a' + k as u8) as char;
            push(
                &mut disks,
                disk(
                    name(format_args!("sd{}", letter)),
                    super::DiskKind::Ahci,
                    d.queue,
                    model,
                    serial,
                ),
            );
        }
        if let Some(d) = nvme::disk() {
            let serial = d.hw.info().serial;
            let serial = core::str::from_utf8(&serial).unwrap_or("").trim();
            for k in 0..d.hw.ns_queues() {
                if let Some(q) = nvme::namespace(k) {
                    push(
                        &mut disks,
                        disk(
                            name(format_args!("nvme0n{}", k + 1)),
                            super::DiskKind::Nvme,
                            q,
                            "",
                            serial,
                        ),
                    );
                }
            }
        }
        for &i in &disks {
            scan_disk(i);
        }
        super::dm::create_from_cmdline(crate::boot_info().cmdline);
        print();
    });
}

fn push(disks: &mut heapless::Vec<usize, MAX_DEVICES>, i: Option<usize>) {
    if let Some(i) = i {
        let _ = disks.push(i);
    }
}

/// Bytes of the DMA buffer table sectors are read into.
const READ_BYTES: usize = 16 << 10;
/// Bytes of the scan's scratch buffer: one 4 KiB block and the usual 16 KiB entry array.
const SCRATCH_BYTES: usize = 20 << 10;

/// The buffers of the partition scan (boot only, one disk at a time).
struct ScanMem {
    dma: DmaRegion,
    scratch: [u8; SCRATCH_BYTES],
}

static SCAN_MEM: Mutex<Option<ScanMem>> = Mutex::new(None);

/// Reads `buf.len()` bytes from `sector` of `dev` through the DMA buffer.
fn read_sectors(
    dev: &'static dyn BlockDevice,
    dma: &DmaRegion,
    mut sector: u64,
    buf: &mut [u8],
) -> Result<(), BlkError> {
    for chunk in buf.chunks_mut(READ_BYTES) {
        let v = dma
            .segment(0, chunk.len() as u32)
            .ok_or(BlkError::InvalidArgument)?;
        let mut b = IO_SET.alloc((), Op::Read, 1, Wait::Hook(super::wait))?;
        b.set_dev(dev);
        b.set_sector(sector);
        b.add_vec(v)?;
        submit_bio_wait(cpu_ctx(), b, super::wait).0?;
        chunk.copy_from_slice(&dma.as_slice()[..chunk.len()]);
        sector += (chunk.len() / 512) as u64;
    }
    Ok(())
}

/// Scans the disk at `index` and registers its partitions.
fn scan_disk(index: usize) {
    let Some(d) = get(index) else { return };
    let mut mem = SCAN_MEM.lock();
    if mem.is_none() {
        match DmaBuf::alloc(READ_BYTES, 4096) {
            Ok(buf) => {
                *mem = Some(ScanMem {
                    dma: DmaRegion::from_dma_buf(buf),
                    scratch: [0; SCRATCH_BYTES],
                })
            }
            Err(_) => {
                defmt::error!(
                    "{=str}: partitions not scanned: no DMA memory",
                    d.name.as_str()
                );
                return;
            }
        }
    }
    let Some(ScanMem { dma, scratch }) = mem.as_mut() else {
        return;
    };
    let per_block = (d.block_size / 512) as u64;
    let dev = d.dev;
    let dma = &*dma;
    let mut read = |lba: u64, buf: &mut [u8]| read_sectors(dev, dma, lba * per_block, buf);
    let blocks = d.sectors / per_block.max(1);
    let s = match partition::scan(d.block_size, blocks, &mut read, scratch) {
        Ok(s) => s,
        Err(ScanError::NoTable) => return,
        Err(ScanError::BadGpt { primary, backup }) => {
            defmt::error!(
                "{=str}: GPT unusable: primary {=str}, backup {=str}; the disk is used whole",
                d.name.as_str(),
                damage(primary),
                damage(backup)
            );
            return;
        }
        Err(e) => {
            defmt::error!(
                "{=str}: partition table not read: {}; the disk is used whole",
                d.name.as_str(),
                defmt::Debug2Format(&e)
            );
            return;
        }
    };
    if let Some(why) = s.primary_damage {
        defmt::warn!(
            "{=str}: primary GPT damaged ({=str}): using the backup GPT at the end of the disk",
            d.name.as_str(),
            damage(why)
        );
    }
    for r in &s.refused {
        let mut why = heapless::String::<64>::new();
        let _ = match r.why {
            Refusal::OutOfDisk => write!(why, "reaches past the end of its disk or container"),
            Refusal::Overlap(n) => write!(why, "overlaps partition {}", n),
            Refusal::Empty => write!(why, "empty or at block 0"),
            Refusal::OutsideUsable => write!(why, "outside the GPT's usable blocks"),
            Refusal::TooMany => write!(why, "more than {} partitions", partition::MAX_PARTS),
            Refusal::ChainLoop => write!(why, "logical chain loops: chain stopped"),
            Refusal::ChainBroken => write!(why, "logical chain link invalid: chain stopped"),
        };
        defmt::warn!(
            "{=str}: partition {=u32} (blocks {=u64}+{=u64}) refused: {=str}",
            d.name.as_str(),
            r.number,
            r.start,
            r.blocks,
            why.as_str()
        );
    }
    defmt::println!(
        "{=str}: {=str} table, {=usize} partition(s)",
        d.name.as_str(),
        match s.scheme {
            Scheme::Mbr => "MBR",
            Scheme::Gpt => "GPT",
        },
        s.parts.len()
    );
    TABLES[index].call_once(|| TableNote {
        scheme: s.scheme,
        accepted: s.parts.len(),
        refused: s.refused.len(),
        primary_damage: s.primary_damage,
    });
    for p in &s.parts {
        add_partition(index, d, p);
    }
}

/// Scans the mapped device registered at `index` for a partition table and registers its
/// partitions (`<name>p1`, ...), as [`init`] does for disks. Process context.
pub(super) fn scan_mapped(index: usize) {
    scan_disk(index);
}

/// Registers mapped device `index` (`super::dm`) under `name`; `None` when the table is full.
pub(super) fn add_mapped(
    name: Name,
    index: usize,
    dev: &'static dyn BlockDevice,
    limits: QueueLimits,
    stats: &'static BlkStats,
) -> Option<&'static Device> {
    let i = register(Device {
        name,
        dev,
        kind: DevKind::Mapped(index),
        sectors: dev.capacity(),
        block_size: dev.logical_block_size(),
        limits,
        model: heapless::String::new(),
        serial: heapless::String::new(),
        stats,
        queue_stats: stats,
    })?;
    get(i)
}

fn add_partition(index: usize, d: &'static Device, p: &PartEntry) {
    let k = PART_COUNT.load(Ordering::Relaxed);
    let sep =
        if matches!(d.kind, DevKind::Mapped(_)) || d.name.ends_with(|c: char| c.is_ascii_digit()) {
            "p"
        } else {
            ""
        };
    let n = name(format_args!("{}{}{}", d.name, sep, p.number));
    if k == MAX_PARTITIONS {
        defmt::error!(
            "{=str} not registered: at most {=usize} partitions",
            n.as_str(),
            MAX_PARTITIONS
        );
        return;
    }
    let lin = match Linear::partition(d.dev, p) {
        Ok(l) => PARTS[k].call_once(|| l),
        Err(e) => {
            defmt::error!(
                "{=str} not registered: {}",
                n.as_str(),
                defmt::Debug2Format(&e)
            );
            return;
        }
    };
    PART_COUNT.store(k + 1, Ordering::Relaxed);
    register(Device {
        name: n,
        dev: lin,
        kind: DevKind::Partition(PartInfo {
            disk: index,
            start: p.start,
            entry: *p,
        }),
        sectors: p.sectors,
        block_size: d.block_size,
        limits: d.limits,
        model: heapless::String::new(),
        serial: heapless::String::new(),
        stats: lin.stats(),
        queue_stats: d.queue_stats,
    });
}

fn damage(d: GptDamage) -> &'static str {
    match d {
        GptDamage::NoSignature => "no signature",
        GptDamage::HeaderCrc => "header CRC mismatch",
        GptDamage::HeaderFields => "header fields out of bounds",
        GptDamage::EntriesCrc => "entry array CRC mismatch",
        GptDamage::EntriesTooLarge => "entry array too large",
        GptDamage::Read(_) => "read error",
    }
}

/// A GPT type GUID in its text form (`0FC63DAF-8483-4772-8E79-3D69D8477DE4`).
pub fn guid_text(g: &[u8; 16]) -> heapless::String<36> {
    let mut s = heapless::String::new();
    let _ = write!(
        s,
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9]
    );
    for b in &g[10..] {
        let _ = write!(s, "{:02X}", b);
    }
    s
}

/// What a few well-known partition types are called.
pub fn type_name(kind: &PartKind) -> &'static str {
    match kind {
        PartKind::Mbr(0x83) => "Linux",
        PartKind::Mbr(0x82) => "Linux swap",
        PartKind::Mbr(0x0c) => "FAT32 (LBA)",
        PartKind::Mbr(0x07) => "NTFS/exFAT",
        PartKind::Mbr(0xef) => "EFI System",
        PartKind::Mbr(_) => "",
        PartKind::Gpt { type_guid, .. } => match guid_text(type_guid).as_str() {
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
            "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI System",
            "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
            _ => "",
        },
    }
}

/// Prints the registry: one line per device, then the setup problems, if any
/// ([`super::setup_errors`]: a refused `dm=` table, a pool not filled).
pub fn print() {
    print_devices();
    let n = super::setup_errors::count();
    if n != 0 {
        defmt::error!(
            "block setup: {=usize} problem(s); the devices above are what works:",
            n
        );
        super::setup_errors::for_each(|s| defmt::error!("  {=str}", s));
    }
}

fn print_devices() {
    defmt::println!(
        "registry: {=usize} device(s)",
        COUNT.load(Ordering::Acquire)
    );
    for d in devices() {
        let mib = d.sectors >> 11;
        match d.kind {
            DevKind::Disk(kind) => defmt::println!(
                "  {=str} {=str} {=u64} sectors ({=u64} MiB), block {=u32}, max {=u32} sectors x {=u16} segs, virt boundary {=u64:#x}, model \"{=str}\" serial \"{=str}\"",
                d.name.as_str(),
                kind.word(),
                d.sectors,
                mib,
                d.block_size,
                d.limits.max_sectors,
                d.limits.max_segments,
                d.limits.virt_boundary_mask,
                d.model.as_str(),
                d.serial.as_str()
            ),
            DevKind::Partition(p) => {
                let mut what = heapless::String::<96>::new();
                let _ = match &p.entry.kind {
                    PartKind::Mbr(ty) => write!(what, "mbr type {:#04x}", ty),
                    PartKind::Gpt { type_guid, .. } => {
                        let _ = write!(what, "gpt \"");
                        for c in p.entry.name() {
                            if what.push(c).is_err() {
                                break;
                            }
                        }
                        write!(what, "\" type {}", guid_text(type_guid))
                    }
                };
                defmt::println!(
                    "  {=str} partition {=u64} sectors ({=u64} MiB) at sector {=u64} of {=str}, {=str} {=str}",
                    d.name.as_str(),
                    d.sectors,
                    mib,
                    p.start,
                    get(p.disk).map_or("?", |x| x.name.as_str()),
                    what.as_str(),
                    type_name(&p.entry.kind)
                )
            }
            DevKind::Mapped(i) => defmt::println!(
                "  {=str} mapped {=u64} sectors ({=u64} MiB), block {=u32}, max {=u32} sectors x {=u16} segs, table \"{=str}\"",
                d.name.as_str(),
                d.sectors,
                mib,
                d.block_size,
                d.limits.max_sectors,
                d.limits.max_segments,
                super::dm::table_text(i).unwrap_or("?")
            ),
        }
    }
}
