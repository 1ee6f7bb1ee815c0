//! Crash test: a recording device keeps every write and every durability barrier; for each
//! barrier of a workload and random subsets (and orders) of the writes issued after it, the
//! image must mount, fsck clean, and hold exactly the tree of the commit it mounts, which is
//! never older than the last commit completed before the cut.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::model::{Model, SmallFs, compare, step};
use super::{Rng, scale};
use crate::format::BLOCK_SIZE;
use crate::host::MemDisk;
use crate::io::{BlockIo, IoError, Run, WriteFlags};
use crate::v1::*;

enum Event {
    Write {
        block: u64,
        data: Vec<u8>,
    },
    /// Everything before is durable.
    Barrier,
}

struct Recorder {
    disk: MemDisk,
    log: Vec<Event>,
}

impl BlockIo for Recorder {
    fn block_count(&self) -> u64 {
        self.disk.block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> std::result::Result<(), IoError> {
        self.disk.read(block, buf)
    }
    fn write(&mut self, runs: &[Run<'_>], flags: WriteFlags) -> std::result::Result<(), IoError> {
        if flags.preflush {
            self.log.push(Event::Barrier);
        }
        self.disk.write(runs, flags)?;
        for r in runs {
            for (i, c) in r.data.chunks(BLOCK_SIZE).enumerate() {
                self.log.push(Event::Write {
                    block: r.block + i as u64,
                    data: c.to_vec(),
                });
            }
        }
        if flags.fua {
            self.log.push(Event::Barrier);
        }
        Ok(())
    }
}

fn apply(img: &mut [u8], block: u64, data: &[u8]) {
    let o = block as usize * BLOCK_SIZE;
    img[o..o + data.len()].copy_from_slice(data);
}

/// Crash states whose newest superblock slot was torn.
static TORN: AtomicU64 = AtomicU64::new(0);

/// Checks one crash image; returns the generation it mounted. A crash state is fsck-clean, or
/// its newest superblock slot is torn (the commit record write was cut): then fsck says it fell
/// back (and reports nothing else), and so does mount.
fn check_state(img: Vec<u8>, snaps: &BTreeMap<u64, Model>, min_gen: u64, what: &str) -> u64 {
    let mut disk = MemDisk { data: img };
    let mut buf = vec![0u8; 16 * 1024];
    let torn = {
        let mut fs = SmallFs::new(&mut disk, &mut buf);
        let mut problems = Vec::new();
        let st = fs
            .fsck(&mut |p| problems.push(p))
            .unwrap_or_else(|e| panic!("{what}: fsck failed: {e}"));
        match st.status {
            FsckStatus::Clean => {
                assert!(problems.is_empty(), "{what}: fsck problems {problems:?}");
                assert_eq!(st.problems, 0);
                assert_eq!(st.fell_back_from, None);
                None
            }
            FsckStatus::RolledBackTorn => {
                let Some(Fallback::TornSuperblock(slot)) = st.fell_back_from else {
                    panic!("{what}: {st:?}");
                };
                assert_eq!(
                    problems,
                    [Problem {
                        block: slot.slot,
                        ino: None,
                        what: slot.what
                    }],
                    "{what}: only the torn slot"
                );
                TORN.fetch_add(1, Ordering::Relaxed);
                Some(slot)
            }
            other => panic!("{what}: fsck {other:?}, problems {problems:?}"),
        }
    };
    let mut fs = SmallFs::new(&mut disk, &mut buf);
    let report = fs
        .mount(true)
        .unwrap_or_else(|e| panic!("{what}: mount failed: {e}"));
    assert_eq!(
        report.fell_back_from,
        torn.map(Fallback::TornSuperblock),
        "{what}: mount and fsck agree"
    );
    let g = fs.generation();
    assert_eq!(report.generation, g);
    assert!(
        g >= min_gen,
        "{what}: mounted generation {g} older than durable {min_gen}"
    );
    let m = snaps
        .get(&g)
        .unwrap_or_else(|| panic!("{what}: generation {g} was never committed"));
    compare(&mut fs, m).unwrap_or_else(|e| panic!("{what}: generation {g}: {e}"));
    g
}

/// Runs one workload and checks crash states; returns how many.
fn crash_workload(seed: u64, subsets_per_epoch: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let mut disk = MemDisk::new(200);
    let mut buf = vec![0u8; 16 * 1024];
    {
        let mut fs = SmallFs::new(&mut disk, &mut buf);
        fs.mkfs(MkfsOptions {
            blocks: None,
            inode_blocks: 2,
        })
        .unwrap();
    }
    let base = disk.data.clone();
    let mut rec = Recorder {
        disk,
        log: Vec::new(),
    };
    let mut m = Model::default();
    let mut snaps = BTreeMap::new();
    snaps.insert(1u64, m.clone());
    {
        let mut fs = SmallFs::new(&mut rec, &mut buf);
        fs.mount(false).unwrap();
        let mut syncs = 0;
        let mut steps = 0;
        while syncs < 25 && steps < 400 {
            steps += 1;
            if !step(&mut rng, &mut fs, &mut m, false) {
                syncs += 1;
                snaps.insert(fs.generation(), m.clone());
            }
        }
        fs.sync().unwrap();
        snaps.insert(fs.generation(), m.clone());
    }
    // Walk the log epoch by epoch.
    let mut durable = base;
    let mut durable_gen = 1u64;
    let mut states = 0;
    let mut i = 0;
    let log = &rec.log;
    while i <= log.len() {
        let mut j = i;
        while j < log.len() && !matches!(log[j], Event::Barrier) {
            j += 1;
        }
        let pending: Vec<(u64, &[u8])> = log[i..j]
            .iter()
            .filter_map(|e| match e {
                Event::Write { block, data } => Some((*block, data.as_slice())),
                Event::Barrier => None,
            })
            .collect();
        // Crash states: none landed, all landed, random subsets in random order, torn blocks.
        let n = pending.len() as u64;
        let tries = if n == 0 {
            1
        } else {
            subsets_per_epoch.min(1 << n.min(20)) + 2
        };
        for t in 0..tries {
            let mut img = durable.clone();
            let mut order: Vec<usize> = (0..pending.len()).collect();
            for k in (1..order.len()).rev() {
                order.swap(k, rng.below(k as u64 + 1) as usize);
            }
            for &k in &order {
                let keep = match t {
                    0 => false,
                    1 => true,
                    _ => rng.chance(50),
                };
                if keep {
                    let (b, d) = pending[k];
                    if t >= 2 && rng.chance(10) {
                        // A torn write: only a prefix of sectors landed.
                        let sectors = rng.below(8) as usize * 512;
                        apply(&mut img, b, &d[..sectors]);
                    } else {
                        apply(&mut img, b, d);
                    }
                }
            }
            check_state(
                img,
                &snaps,
                durable_gen,
                &format!("seed {seed} epoch at event {i} try {t}"),
            );
            states += 1;
        }
        // The epoch ends with a barrier: everything in it is durable.
        for (b, d) in &pending {
            apply(&mut durable, *b, d);
        }
        if j < log.len() {
            let g = check_state(
                durable.clone(),
                &snaps,
                durable_gen,
                &format!("seed {seed} barrier at {j}"),
            );
            durable_gen = g;
            states += 1;
        }
        i = j + 1;
    }
    states
}

#[test]
fn crash_states_mount_clean_with_synced_data() {
    let mut total = 0;
    for seed in 0..(12 * scale()) {
        total += crash_workload(seed + 100, 24);
    }
    let torn = TORN.load(Ordering::Relaxed);
    println!("crash states checked: {total}, {torn} with a torn newest superblock");
    assert!(total >= 2000, "only {total} crash states");
    assert!(torn > 0, "no crash state tore the commit record");
}
