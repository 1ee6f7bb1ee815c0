//! The device registry and the partitions found at attach, on disks whose tables the Linux
//! tools wrote (`cargo xtask` runs sfdisk and sgdisk; the layouts are in `xtask/src/parts.rs`,
//! and the values below are theirs). Profile `x86_64-partitions`: `vda` (virtio-blk) with an
//! MBR, `sda` (AHCI) with a GPT, `nvme0n1` (NVMe) with the same GPT and a damaged primary
//! header, `sdb` (AHCI port 1) with an MBR whose entries 3 (overlapping 1) and 4 (past the end
//! of the disk) were added by hand. These tests run gated (`ktest=gated partitions`) and write inside partitions.

use blk::mem::DmaRegion;
use blk::partition::{GptDamage, PartKind, Scheme};
use blk::{Bio, BioVec, BlkError, BlockDevice, Op, Wait, submit_bio, submit_bio_wait};
use hal::DmaBuf;

use crate::block::registry::{self, DevKind, Device};
use crate::block::{self, DiskKind, IO_SET, cpu_ctx};
use crate::ktest::{Outcome, TestResult, fail};

/// One partition the image recipe makes: name, start and length in sectors, type.
struct Want {
    name: &'static str,
    start: u64,
    sectors: u64,
    /// MBR type byte, or 0 for GPT.
    mbr_type: u8,
    /// GPT type GUID (text) and name.
    gpt: Option<(&'static str, &'static str)>,
}

const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const LINUX_SWAP: &str = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F";
const EFI_SYSTEM: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// `mbr` of xtask/src/parts.rs (sfdisk): the extended partition 3 is a container, not a
/// device.
const MBR: [Want; 4] = [
    mbr("vda1", 2048, 16384, 0x83),
    mbr("vda2", 18432, 8192, 0x0c),
    mbr("vda5", 28672, 20480, 0x83),
    mbr("vda6", 51200, 40960, 0x82),
];

const fn mbr(name: &'static str, start: u64, sectors: u64, ty: u8) -> Want {
    Want {
        name,
        start,
        sectors,
        mbr_type: ty,
        gpt: None,
    }
}

const fn gpt(
    name: &'static str,
    start: u64,
    sectors: u64,
    ty: &'static str,
    label: &'static str,
) -> Want {
    Want {
        name,
        start,
        sectors,
        mbr_type: 0,
        gpt: Some((ty, label)),
    }
}

/// `gpt` of xtask/src/parts.rs (sgdisk), on `sda`.
const GPT_SDA: [Want; 3] = [
    gpt("sda1", 2048, 16384, LINUX_FS, "root"),
    gpt("sda2", 18432, 8192, LINUX_SWAP, "swap space"),
    gpt("sda3", 26624, 32768, EFI_SYSTEM, "EFI system"),
];

/// `gpt-damaged`, on `nvme0n1`: the same partitions, read from the backup GPT.
const GPT_NVME: [Want; 3] = [
    gpt("nvme0n1p1", 2048, 16384, LINUX_FS, "root"),
    gpt("nvme0n1p2", 18432, 8192, LINUX_SWAP, "swap space"),
    gpt("nvme0n1p3", 26624, 32768, EFI_SYSTEM, "EFI system"),
];

/// The registered device `name`, or the failure (or the skip when its kind is missing).
fn dev(name: &str, kind: DiskKind) -> Result<&'static Device, Outcome> {
    if !kind.attached() {
        return Err(Outcome::NoDisk(kind));
    }
    registry::find(name).ok_or_else(|| fail(format_args!("no device {} in the registry", name)))
}

/// Checks the partitions of `disk` against `want`, and that it has no others.
fn check_table(disk: &str, kind: DiskKind, sectors: u64, want: &[Want]) -> TestResult {
    let d = dev(disk, kind)?;
    check!(
        matches!(d.kind, DevKind::Disk(k) if k == kind),
        "{} is registered as {:?}",
        disk,
        d.kind
    );
    check_eq!(d.sectors, sectors);
    check_eq!(registry::partitions_of(disk).count(), want.len());
    for w in want {
        let p = registry::find(w.name)
            .ok_or_else(|| fail(format_args!("partition {} not registered", w.name)))?;
        let DevKind::Partition(info) = p.kind else {
            return Err(fail(format_args!("{} is not a partition", w.name)));
        };
        check!(
            registry::get(info.disk).is_some_and(|x| x.name == disk),
            "{} belongs to another disk",
            w.name
        );
        check_eq!(
            (w.name, info.start, p.sectors),
            (w.name, w.start, w.sectors)
        );
        check_eq!(p.dev.capacity(), w.sectors);
        match (&info.entry.kind, w.gpt) {
            (PartKind::Mbr(ty), None) => check_eq!((w.name, *ty), (w.name, w.mbr_type)),
            (PartKind::Gpt { type_guid, .. }, Some((ty, label))) => {
                let guid = registry::guid_text(type_guid);
                check_eq!((w.name, guid.as_str()), (w.name, ty));
                let mut name = heapless::String::<72>::new();
                for c in info.entry.name() {
                    let _ = name.push(c);
                }
                check_eq!((w.name, name.as_str()), (w.name, label));
            }
            (k, _) => return Err(fail(format_args!("{}: wrong table kind {:?}", w.name, k))),
        }
    }
    Ok(())
}

ktest! {
    #[only_with = "partitions"]
    fn registry_names_every_disk() -> TestResult {
        for (name, kind, sectors) in [
            ("vda", DiskKind::Virtio, 131_072u64),
            ("sda", DiskKind::Ahci, 65_536),
            ("nvme0n1", DiskKind::Nvme, 65_536),
            ("sdb", DiskKind::Ahci, 65_536),
        ] {
            let d = dev(name, kind)?;
            check_eq!((name, d.sectors, d.block_size), (name, sectors, 512));
            check!(d.limits.max_sectors > 0 && d.limits.max_segments > 0, "{}: limits {:?}", name, d.limits);
        }
        // The drivers' identities: AHCI model and serial, NVMe serial (the profile's).
        check_eq!(registry::find("sda").map(|d| d.model.as_str()), Some("QEMU HARDDISK"));
        check_eq!(registry::find("nvme0n1").map(|d| d.serial.as_str()), Some("stack0001"));
        check!(registry::find("vdb").is_none(), "a second virtio disk appeared");
        check!(registry::find("vda3").is_none(), "the extended partition is registered");
        Ok(())
    }
}

ktest! {
    #[only_with = "partitions"]
    fn mbr_from_sfdisk_with_logical_partitions() -> TestResult {
        check_table("vda", DiskKind::Virtio, 131_072, &MBR)?;
        let note = registry::index_of("vda").and_then(registry::table);
        check_eq!(note.map(|n| (n.scheme, n.refused, n.primary_damage)), Some((Scheme::Mbr, 0, None)));
        Ok(())
    }
}

ktest! {
    #[only_with = "partitions"]
    fn gpt_from_sgdisk_with_names() -> TestResult {
        check_table("sda", DiskKind::Ahci, 65_536, &GPT_SDA)?;
        let note = registry::index_of("sda").and_then(registry::table);
        check_eq!(note.map(|n| (n.scheme, n.refused, n.primary_damage)), Some((Scheme::Gpt, 0, None)));
        Ok(())
    }
}

ktest! {
    #[only_with = "partitions"]
    fn damaged_primary_gpt_falls_back_to_the_backup() -> TestResult {
        check_table("nvme0n1", DiskKind::Nvme, 65_536, &GPT_NVME)?;
        let note = registry::index_of("nvme0n1").and_then(registry::table);
        check_eq!(
            note.map(|n| (n.scheme, n.refused, n.primary_damage)),
            Some((Scheme::Gpt, 0, Some(GptDamage::HeaderCrc)))
        );
        Ok(())
    }
}

/// `mbr-bad` of xtask/src/parts.rs, on `sdb`: entries 3 and 4 are refused.
const MBR_BAD: [Want; 2] = [
    mbr("sdb1", 2048, 8192, 0x83),
    mbr("sdb2", 10240, 8192, 0x83),
];

ktest! {
    #[only_with = "partitions"]
    fn bad_entries_are_refused_and_the_disk_stays_usable() -> TestResult {
        check_table("sdb", DiskKind::Ahci, 65_536, &MBR_BAD)?;
        let note = registry::index_of("sdb").and_then(registry::table);
        check_eq!(note.map(|n| (n.scheme, n.accepted, n.refused)), Some((Scheme::Mbr, 2, 2)));
        check!(registry::find("sdb3").is_none(), "the overlapping entry 3 was registered");
        check!(registry::find("sdb4").is_none(), "the out-of-disk entry 4 was registered");
        // The whole disk still works, in the space the refused entries claimed too.
        let disk = dev("sdb", DiskKind::Ahci)?;
        let (mut out, mut back) = buffers()?;
        for sector in [4096u64, 60000, 65_536 - 8] {
            for (i, b) in out.as_mut_slice()[..4096].iter_mut().enumerate() {
                *b = (sector as u8) ^ (i as u8);
            }
            let v = out.segment(0, 4096).ok_or_else(|| fail(format_args!("segment")))?;
            io(disk.dev, Op::Write, sector, v)?;
            back.as_mut_slice()[..4096].fill(0);
            let v = back.segment(0, 4096).ok_or_else(|| fail(format_args!("segment")))?;
            io(disk.dev, Op::Read, sector, v)?;
            check!(back.as_slice()[..4096] == out.as_slice()[..4096], "sdb sector {} read back wrong", sector);
        }
        Ok(())
    }
}

fn ok<T>(r: Result<T, tinyfs::FsError>, what: &str) -> Result<T, Outcome> {
    r.map_err(|e| fail(format_args!("{}: {}", what, e)))
}

/// Two 8 KiB DMA buffers for the I/O tests, kept for the rest of the boot.
fn buffers() -> Result<(DmaRegion, DmaRegion), Outcome> {
    let one = || {
        DmaBuf::alloc(8192, 4096)
            .map(DmaRegion::from_dma_buf)
            .map_err(|e| fail(format_args!("no DMA memory: {:?}", e)))
    };
    Ok((one()?, one()?))
}

fn bio(dev: &'static dyn BlockDevice, op: Op, sector: u64, v: BioVec) -> Result<Bio, Outcome> {
    let mut b = IO_SET
        .alloc((), op, 1, Wait::Hook(block::wait))
        .map_err(|e| fail(format_args!("bio: {:?}", e)))?;
    b.set_dev(dev);
    b.set_sector(sector);
    b.add_vec(v)
        .map_err(|e| fail(format_args!("bio vec: {:?}", e)))?;
    Ok(b)
}

fn io(dev: &'static dyn BlockDevice, op: Op, sector: u64, v: BioVec) -> Result<(), Outcome> {
    let b = bio(dev, op, sector, v)?;
    submit_bio_wait(cpu_ctx(), b, block::wait)
        .0
        .map_err(|e| fail(format_args!("{:?} at sector {}: {:?}", op, sector, e)))
}

/// The partitions the I/O tests use, one per disk.
const IO_PARTS: [(&str, DiskKind); 3] = [
    ("vda5", DiskKind::Virtio),
    ("sda2", DiskKind::Ahci),
    ("nvme0n1p3", DiskKind::Nvme),
];

ktest! {
    #[only_with = "partitions"]
    fn io_inside_a_partition_lands_at_its_disk_offset() -> TestResult {
        let (mut out, mut back) = buffers()?;
        for (seed, (name, kind)) in IO_PARTS.into_iter().enumerate() {
            let p = dev(name, kind)?;
            let DevKind::Partition(info) = p.kind else {
                return Err(fail(format_args!("{} is not a partition", name)));
            };
            let disk = registry::get(info.disk).ok_or_else(|| fail(format_args!("no disk")))?;
            // The partition's first and last 4 KiB, written through the partition, read
            // back through the whole disk at start + offset.
            for (k, sector) in [0, p.sectors - 8].into_iter().enumerate() {
                let tag = (seed * 2 + k) as u8 + 1;
                for (i, b) in out.as_mut_slice()[..4096].iter_mut().enumerate() {
                    *b = tag ^ (i as u8).wrapping_mul(31);
                }
                let v = out.segment(0, 4096).ok_or_else(|| fail(format_args!("segment")))?;
                io(p.dev, Op::Write, sector, v)?;
                back.as_mut_slice()[..4096].fill(0);
                let v = back.segment(0, 4096).ok_or_else(|| fail(format_args!("segment")))?;
                io(disk.dev, Op::Read, info.start + sector, v)?;
                check!(
                    back.as_slice()[..4096] == out.as_slice()[..4096],
                    "{}: sector {} written through the partition is not at disk sector {}",
                    name,
                    sector,
                    info.start + sector
                );
            }
        }
        Ok(())
    }
}

ktest! {
    #[only_with = "partitions"]
    fn io_past_a_partition_end_never_reaches_the_disk() -> TestResult {
        let (out, _) = buffers()?;
        for (name, kind) in IO_PARTS {
            let p = dev(name, kind)?;
            let DevKind::Partition(info) = p.kind else {
                return Err(fail(format_args!("{} is not a partition", name)));
            };
            let disk = registry::get(info.disk).ok_or_else(|| fail(format_args!("no disk")))?;
            let before = disk.stats.snapshot();
            let part_before = p.stats.snapshot();
            // Straddling the end, just past it, and far past it (inside the disk).
            for (sector, op) in [
                (p.sectors - 4, Op::Read),
                (p.sectors - 4, Op::Write),
                (p.sectors, Op::Write),
                (p.sectors + 1024, Op::Read),
            ] {
                let v = out.segment(0, 4096).ok_or_else(|| fail(format_args!("segment")))?;
                let b = bio(p.dev, op, sector, v)?;
                match submit_bio(cpu_ctx(), b) {
                    Err((e, _bio)) => check_eq!((name, sector, e), (name, sector, BlkError::OutOfRange)),
                    Ok(()) => {
                        return Err(fail(format_args!(
                            "{}: {:?} of 8 sectors at {} (size {}) accepted",
                            name, op, sector, p.sectors
                        )))
                    }
                }
            }
            let after = disk.stats.snapshot();
            check_eq!(
                (name, after.bios_submitted, after.requests_dispatched),
                (name, before.bios_submitted, before.requests_dispatched)
            );
            check_eq!((name, p.stats.snapshot().remaps), (name, part_before.remaps));
        }
        Ok(())
    }
}

ktest! {
    #[only_with = "partitions"]
    fn tinyfs_on_the_partition_root_names() -> TestResult {
        // The profile says `root=sda1`: the filesystem goes on that partition, and only there.
        check_eq!(crate::fs::root_name(), Some("sda1"));
        let p = dev("sda1", DiskKind::Ahci)?;
        let disk = dev("sda", DiskKind::Ahci)?;
        let root = crate::fs::root_device().ok_or_else(|| fail(format_args!("no root device")))?;
        check!(core::ptr::addr_eq(root, p.dev), "the root device is not sda1");
        // Markers just outside sda1: the free 4 KiB before it, and sda2's first 4 KiB.
        let (mut out, mut back) = buffers()?;
        let outside = [2048 - 8, 18432];
        for (k, &sector) in outside.iter().enumerate() {
            out.as_mut_slice()[..4096].fill(0xa0 + k as u8);
            let v = out.segment(0, 4096).ok_or_else(|| fail(format_args!("segment")))?;
            io(disk.dev, Op::Write, sector, v)?;
        }
        let before = disk.queue_stats.snapshot();
        let text: &[u8] = b"tinyfs on a GPT partition made by sgdisk\n";
        let r = crate::fs::with_fs(|inst| -> TestResult {
            let (mut fs, how, _) =
                ok(inst.mount_kernel(), "mount (mkfs on the blank partition)")?;
            check_eq!(how, crate::fs::Mounted::Formatted);
            check_eq!(ok(fs.statfs(), "statfs")?.blocks, crate::fs::fs_blocks(p.sectors / 8));
            let f = ok(fs.create("/hello.txt"), "create")?;
            ok(fs.write(f, 0, text), "write")?;
            ok(fs.unmount().map(|_| ()), "unmount")?;
            super::fs::fsck_clean(inst)?;
            let (mut fs, how, _) = ok(inst.mount_kernel(), "remount")?;
            check_eq!(how, crate::fs::Mounted::Existing);
            let f = ok(fs.open("/hello.txt"), "open")?;
            let mut got = [0u8; 64];
            let n = ok(fs.read(f, 0, &mut got), "read")?;
            check!(got[..n] == *text, "read back {:?}", &got[..n]);
            ok(fs.unmount().map(|_| ()), "unmount")
        })
        .map_err(|e| fail(format_args!("filesystem setup: {:?}", e)))?;
        r?;
        let after = disk.queue_stats.snapshot();
        check!(
            after.requests_dispatched > before.requests_dispatched,
            "the filesystem's I/O did not reach sda's queue"
        );
        for (k, &sector) in outside.iter().enumerate() {
            back.as_mut_slice()[..4096].fill(0);
            let v = back.segment(0, 4096).ok_or_else(|| fail(format_args!("segment")))?;
            io(disk.dev, Op::Read, sector, v)?;
            check!(
                back.as_slice()[..4096].iter().all(|&b| b == 0xa0 + k as u8),
                "sda sector {} outside sda1 changed",
                sector
            );
        }
        Ok(())
    }
}

ktest! {
    #[only_with = "partitions"]
    fn two_filesystems_at_once_on_partitions() -> TestResult {
        // vda1 (MBR by sfdisk) and nvme0n1p1 (GPT read from its backup): not used by the
        // other tests of this profile.
        super::fs::two_filesystems_at_once("vda1", "nvme0n1p1")
    }
}

// Disks with 4096-byte logical blocks (profile `x86_64-4k`, `ktest=gated lbs4k`): virtio-blk
// `vda` (`logical_block_size=4096`) and NVMe `nvme0n1` (an `nvme-ns` with
// `logical_block_size=4096`), 32 MiB each, each with the `gpt-4k` table of xtask/src/parts.rs
// (written in 4 KiB sectors): partition 1 `tinyfs` at block 256 (16 MiB), partition 2 `data`
// from block 4352 to the last usable block, 8186.

/// The 4 KiB disks and their partitions: disk, kind, first partition, second partition.
const DISKS_4K: [(&str, DiskKind, &str, &str); 2] = [
    ("vda", DiskKind::Virtio, "vda1", "vda2"),
    ("nvme0n1", DiskKind::Nvme, "nvme0n1p1", "nvme0n1p2"),
];

ktest! {
    #[only_with = "lbs4k"]
    fn disks_with_4k_blocks_have_4k_limits() -> TestResult {
        for (name, kind, _, _) in DISKS_4K {
            let d = dev(name, kind)?;
            let l = d.limits;
            check_eq!((name, d.block_size, l.logical_block_size), (name, 4096, 4096));
            check_eq!((name, d.sectors, d.dev.capacity()), (name, 65_536, 65_536));
            check_eq!((name, d.dev.logical_block_size()), (name, 4096));
            check!(
                l.max_sectors >= 8 && l.max_sectors % 8 == 0,
                "{}: max {} sectors is not a whole number of 4 KiB blocks",
                name,
                l.max_sectors
            );
            // Discard and write-zeroes limits are cut down to whole blocks when a bio is
            // split (`split_point`); each must allow at least one block.
            check!(
                [l.max_discard_sectors, l.max_write_zeroes_sectors]
                    .iter()
                    .all(|&m| m == 0 || m >= 8),
                "{}: discard/write-zeroes limits below one block: {:?}",
                name,
                l
            );
        }
        Ok(())
    }
}

ktest! {
    #[only_with = "lbs4k"]
    fn gpt_in_4k_sectors() -> TestResult {
        for (disk, kind, p1, p2) in DISKS_4K {
            // The table's values are in 4 KiB blocks; the registry's in 512-byte sectors.
            let want = [
                gpt(p1, 256 * 8, 4096 * 8, LINUX_FS, "tinyfs"),
                gpt(p2, 4352 * 8, (8186 - 4352 + 1) * 8, LINUX_FS, "data"),
            ];
            check_table(disk, kind, 65_536, &want)?;
            let note = registry::index_of(disk).and_then(registry::table);
            check_eq!(
                note.map(|n| (n.scheme, n.refused, n.primary_damage)),
                Some((Scheme::Gpt, 0, None))
            );
            for p in [p1, p2] {
                check_eq!((p, dev(p, kind)?.dev.logical_block_size()), (p, 4096));
            }
        }
        Ok(())
    }
}

ktest! {
    #[only_with = "lbs4k"]
    fn misaligned_io_on_4k_disks_is_refused() -> TestResult {
        let (out, _) = buffers()?;
        for (disk, kind, p1, _) in DISKS_4K {
            for name in [disk, p1] {
                let d = dev(name, kind)?;
                let under = registry::find(disk).ok_or_else(|| fail(format_args!("no {}", disk)))?;
                let before = under.queue_stats.snapshot();
                // (sector, bytes): half a block, a block at a 512-byte offset, a block and a
                // half; reads and writes.
                for (sector, len) in [(0u64, 512u32), (1, 4096), (8, 6144), (4, 8192)] {
                    for op in [Op::Read, Op::Write] {
                        let v = out.segment(0, len).ok_or_else(|| fail(format_args!("segment")))?;
                        let b = bio(d.dev, op, sector, v)?;
                        match submit_bio(cpu_ctx(), b) {
                            Err((e, _bio)) => check_eq!(
                                (name, sector, len, e),
                                (name, sector, len, BlkError::Misaligned)
                            ),
                            Ok(()) => {
                                return Err(fail(format_args!(
                                    "{}: {:?} of {} bytes at sector {} accepted",
                                    name, op, len, sector
                                )))
                            }
                        }
                    }
                }
                let after = under.queue_stats.snapshot();
                check_eq!(
                    (name, after.requests_dispatched),
                    (name, before.requests_dispatched)
                );
                // A whole aligned block goes through.
                let v = out.segment(0, 4096).ok_or_else(|| fail(format_args!("segment")))?;
                io(d.dev, Op::Read, 8, v)?;
            }
        }
        Ok(())
    }
}

ktest! {
    #[only_with = "lbs4k"]
    fn io_on_4k_partitions_lands_at_the_disk_offset() -> TestResult {
        let (mut out, mut back) = buffers()?;
        for (seed, (disk, kind, _, p2)) in DISKS_4K.into_iter().enumerate() {
            let p = dev(p2, kind)?;
            let d = dev(disk, kind)?;
            let DevKind::Partition(info) = p.kind else {
                return Err(fail(format_args!("{} is not a partition", p2)));
            };
            for (k, sector) in [0, p.sectors - 16].into_iter().enumerate() {
                let tag = (seed * 2 + k) as u8 + 0x41;
                for (i, b) in out.as_mut_slice().iter_mut().enumerate() {
                    *b = tag ^ (i as u8).wrapping_mul(13);
                }
                let v = out.segment(0, 8192).ok_or_else(|| fail(format_args!("segment")))?;
                io(p.dev, Op::Write, sector, v)?;
                back.as_mut_slice().fill(0);
                let v = back.segment(0, 8192).ok_or_else(|| fail(format_args!("segment")))?;
                io(d.dev, Op::Read, info.start + sector, v)?;
                check!(
                    back.as_slice() == out.as_slice(),
                    "{}: 8 KiB at sector {} is not at disk sector {}",
                    p2,
                    sector,
                    info.start + sector
                );
            }
        }
        Ok(())
    }
}

ktest! {
    #[only_with = "lbs4k"]
    fn two_filesystems_at_once_on_4k_disks() -> TestResult {
        // tinyfs on the virtio and the NVMe partition 1, both 4 KiB-block disks: mkfs, writes,
        // remount and fsck with both mounted at once.
        super::fs::two_filesystems_at_once("vda1", "nvme0n1p1")
    }
}
