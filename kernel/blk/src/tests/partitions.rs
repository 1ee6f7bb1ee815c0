//! `partition::scan` on in-memory disks: MBR with an extended/logical chain (and its loop and
//! bounds protection), GPT with names, the backup GPT when the primary is damaged, refused
//! entries, 4 KiB logical blocks.

use crate::error::BlkError;
use crate::partition::{
    GptDamage, MBR_PROTECTIVE, PartKind, Refusal, ScanError, Scheme, crc32, scan,
};

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// An MBR slot `i` of the block at byte `at`.
fn slot(disk: &mut [u8], at: usize, i: usize, ty: u8, start: u32, len: u32) {
    let e = at + 446 + 16 * i;
    disk[e + 4] = ty;
    put32(disk, e + 8, start);
    put32(disk, e + 12, len);
    disk[at + 510] = 0x55;
    disk[at + 511] = 0xaa;
}

fn run(disk: &[u8], bs: u32) -> Result<crate::partition::Scan, ScanError> {
    let mut read = |lba: u64, buf: &mut [u8]| {
        let at = lba as usize * bs as usize;
        let src = disk.get(at..at + buf.len()).ok_or(BlkError::OutOfRange)?;
        buf.copy_from_slice(src);
        Ok(())
    };
    let mut scratch = vec![0u8; 32 * 1024];
    scan(
        bs,
        (disk.len() / bs as usize) as u64,
        &mut read,
        &mut scratch,
    )
}

#[test]
fn mbr_with_logical_partitions() {
    let mut d = vec![0u8; 4096 * 512];
    slot(&mut d, 0, 0, 0x83, 64, 1000);
    slot(&mut d, 0, 1, 0x05, 2048, 2048);
    // Links at 2048 and 3072: logicals at 2048+32 (500 sectors) and 3072+16 (100).
    slot(&mut d, 2048 * 512, 0, 0x83, 32, 500);
    slot(&mut d, 2048 * 512, 1, 0x05, 1024, 200);
    slot(&mut d, 3072 * 512, 0, 0x82, 16, 100);
    let s = run(&d, 512).expect("table");
    assert_eq!(s.scheme, Scheme::Mbr);
    let got: Vec<_> = s
        .parts
        .iter()
        .map(|p| (p.number, p.start, p.sectors, p.kind))
        .collect();
    assert_eq!(
        got,
        [
            (1, 64, 1000, PartKind::Mbr(0x83)),
            (5, 2080, 500, PartKind::Mbr(0x83)),
            (6, 3088, 100, PartKind::Mbr(0x82)),
        ]
    );
    assert!(s.refused.is_empty());

    // A chain pointing back at its first link stops, and says so; the partitions read
    // before stay.
    let mut looped = d.clone();
    slot(&mut looped, 3072 * 512, 1, 0x05, 0, 100);
    put32(&mut looped, 3072 * 512 + 446 + 16 + 8, 0); // next = ext_start + 0: end of chain
    assert_eq!(run(&looped, 512).unwrap().parts.len(), 3);
    slot(&mut looped, 3072 * 512, 1, 0x05, 1024, 100); // next = 3072: itself
    let s = run(&looped, 512).unwrap();
    assert_eq!(s.parts.len(), 3);
    assert_eq!(s.refused[0].why, Refusal::ChainLoop);

    // A link outside the extended partition, and a logical partition reaching past it.
    let mut broken = d.clone();
    slot(&mut broken, 3072 * 512, 1, 0x05, 4000, 100);
    assert_eq!(
        run(&broken, 512).unwrap().refused[0].why,
        Refusal::ChainBroken
    );
    let mut long = d.clone();
    slot(&mut long, 3072 * 512, 0, 0x82, 16, 2000);
    let s = run(&long, 512).unwrap();
    assert_eq!(s.parts.len(), 2);
    assert_eq!(
        (s.refused[0].number, s.refused[0].why),
        (6, Refusal::OutOfDisk)
    );

    // Overlapping primaries: the second is refused, the first kept.
    let mut over = d.clone();
    slot(&mut over, 0, 2, 0x83, 1000, 10);
    let s = run(&over, 512).unwrap();
    assert_eq!(s.parts.len(), 3);
    assert_eq!(
        (s.refused[0].number, s.refused[0].why),
        (3, Refusal::Overlap(1))
    );

    assert_eq!(run(&vec![0u8; 4096], 512), Err(ScanError::NoTable));
}

const TYPE: [u8; 16] = [0xaf; 16];

/// A GPT disk of `blocks` blocks of `bs` bytes: entries (first, last, name).
fn gpt_disk(bs: usize, blocks: u64, parts: &[(u64, u64, &str)]) -> Vec<u8> {
    let mut d = vec![0u8; bs * blocks as usize];
    slot(&mut d, 0, 0, MBR_PROTECTIVE, 1, (blocks - 1) as u32);
    let mut entries = vec![0u8; 128 * 128];
    for (i, (first, last, name)) in parts.iter().enumerate() {
        let e = &mut entries[i * 128..];
        e[..16].copy_from_slice(&TYPE);
        e[16] = i as u8 + 1;
        put64(e, 32, *first);
        put64(e, 40, *last);
        for (k, u) in name.encode_utf16().enumerate() {
            e[56 + 2 * k..58 + 2 * k].copy_from_slice(&u.to_le_bytes());
        }
    }
    let array_blocks = (16384 / bs) as u64;
    for (at, entries_lba, alt) in [
        (1, 2, blocks - 1),
        (blocks - 1, blocks - 1 - array_blocks, 1),
    ] {
        let mut h = [0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        put32(&mut h, 8, 0x0001_0000);
        put32(&mut h, 12, 92);
        put64(&mut h, 24, at);
        put64(&mut h, 32, alt);
        put64(&mut h, 40, 2 + array_blocks);
        put64(&mut h, 48, blocks - 2 - array_blocks);
        put64(&mut h, 72, entries_lba);
        put32(&mut h, 80, 128);
        put32(&mut h, 84, 128);
        put32(&mut h, 88, crc32(&entries));
        let c = crc32(&h);
        put32(&mut h, 16, c);
        let off = at as usize * bs;
        d[off..off + 92].copy_from_slice(&h);
        let off = entries_lba as usize * bs;
        d[off..off + entries.len()].copy_from_slice(&entries);
    }
    d
}

#[test]
fn gpt_names_and_backup() {
    let d = gpt_disk(512, 4096, &[(40, 1039, "boot"), (2048, 3999, "data ü")]);
    let s = run(&d, 512).expect("gpt");
    assert_eq!((s.scheme, s.primary_damage), (Scheme::Gpt, None));
    assert_eq!(s.parts.len(), 2);
    assert_eq!(
        (s.parts[0].number, s.parts[0].start, s.parts[0].sectors),
        (1, 40, 1000)
    );
    assert_eq!(s.parts[1].name().collect::<String>(), "data ü");
    assert!(matches!(s.parts[0].kind, PartKind::Gpt { type_guid, .. } if type_guid == TYPE));

    // Primary header damaged: the backup is used, and the scan says why.
    let mut bad = d.clone();
    bad[512 + 40] ^= 1;
    let s = run(&bad, 512).expect("backup");
    assert_eq!(s.primary_damage, Some(GptDamage::HeaderCrc));
    assert_eq!(s.parts[1].name().collect::<String>(), "data ü");
    // Primary entry array damaged.
    let mut bad = d.clone();
    bad[2 * 512 + 200] ^= 1;
    assert_eq!(
        run(&bad, 512).unwrap().primary_damage,
        Some(GptDamage::EntriesCrc)
    );
    // Primary signature gone.
    let mut bad = d.clone();
    bad[512..520].fill(0);
    assert_eq!(
        run(&bad, 512).unwrap().primary_damage,
        Some(GptDamage::NoSignature)
    );
    // Both copies damaged: no table, with both reasons.
    bad[4095 * 512 + 40] ^= 1;
    assert_eq!(
        run(&bad, 512),
        Err(ScanError::BadGpt {
            primary: GptDamage::NoSignature,
            backup: GptDamage::HeaderCrc
        })
    );
}

#[test]
fn gpt_refuses_bad_entries_keeps_the_rest() {
    let d = gpt_disk(
        512,
        4096,
        &[
            (40, 1039, "a"),
            (1000, 1100, "overlaps a"),
            (2000, 9000, "too long"),
            (3000, 3999, "d"),
        ],
    );
    let s = run(&d, 512).expect("gpt");
    let kept: Vec<_> = s.parts.iter().map(|p| p.number).collect();
    assert_eq!(kept, [1, 4]);
    let why: Vec<_> = s.refused.iter().map(|r| (r.number, r.why)).collect();
    assert_eq!(why, [(2, Refusal::Overlap(1)), (3, Refusal::OutOfDisk)]);
}

#[test]
fn gpt_on_4k_blocks_reports_512_byte_sectors() {
    let d = gpt_disk(4096, 1024, &[(10, 109, "x")]);
    let s = run(&d, 4096).expect("gpt");
    assert_eq!((s.parts[0].start, s.parts[0].sectors), (80, 800));
    let mut bad = d.clone();
    bad[4096 + 40] ^= 1;
    assert_eq!(
        run(&bad, 4096).unwrap().primary_damage,
        Some(GptDamage::HeaderCrc)
    );
}
