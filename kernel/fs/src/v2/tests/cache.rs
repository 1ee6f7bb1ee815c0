//! The node cache alone, against a model and a device that watches its writes: a pinned frame
//! is never evicted or written, a dirty frame is never dropped unwritten, a miss writes back
//! at most one plugged batch (sorted, unpinned, counted), the index finds exactly the cached
//! blocks, and a failed write-back leaves every frame dirty. Runs at the fewest frames, the
//! kernel's 64 and 1,024.

use std::collections::BTreeSet;
use std::vec;
use std::vec::Vec;

use crate::error::{FsError, IoOp};
use crate::format::BLOCK_SIZE;
use crate::host::MemDisk;
use crate::io::{BlockIo, IoError, IoErrorKind, Run, WriteFlags};
use crate::tests::{Rng, scale};
use crate::v2::cache::{NodeCache, WRITE_BATCH};
use crate::v2::{MIN_FRAMES, node};

/// A RAM device that logs the blocks of each write call and can be told to fail writes.
struct Watch {
    disk: MemDisk,
    /// Blocks of each write call, in the order of its runs.
    calls: Vec<Vec<u64>>,
    /// Runs of each write call.
    runs: Vec<usize>,
    reads: u64,
    fail_writes: bool,
}

impl Watch {
    fn new(blocks: u64) -> Self {
        Watch {
            disk: MemDisk::new(blocks),
            calls: Vec::new(),
            runs: Vec::new(),
            reads: 0,
            fail_writes: false,
        }
    }

    fn block(&self, b: u64) -> &[u8] {
        &self.disk.data[b as usize * BLOCK_SIZE..(b as usize + 1) * BLOCK_SIZE]
    }
}

impl BlockIo for Watch {
    fn block_count(&self) -> u64 {
        self.disk.block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.reads += 1;
        self.disk.read(block, buf)
    }
    fn write(&mut self, runs: &[Run<'_>], flags: WriteFlags) -> Result<(), IoError> {
        if self.fail_writes {
            return Err(IoError::new(runs[0].block, IoErrorKind::Device));
        }
        let mut blocks = Vec::new();
        for r in runs {
            assert!(!r.data.is_empty() && r.data.len() % BLOCK_SIZE == 0);
            blocks.extend(r.block..r.block + (r.data.len() / BLOCK_SIZE) as u64);
        }
        self.calls.push(blocks);
        self.runs.push(runs.len());
        self.disk.write(runs, flags)
    }
}

/// `b` as it is on the device once written: sealed.
fn sealed(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    node::seal(&mut v);
    v
}

fn fill(b: &mut [u8], rng: &mut Rng) {
    for x in b[..node::DATA_END].chunks_mut(8) {
        x.copy_from_slice(&rng.next().to_le_bytes()[..x.len()]);
    }
}

/// The test's view: each block's latest bytes (`None`: freed), and the blocks touched since
/// the last `begin_op` with their frames.
struct Model {
    content: Vec<Option<Vec<u8>>>,
    pinned: Vec<(u64, usize)>,
}

impl Model {
    fn pinned_block(&self, b: u64) -> bool {
        self.pinned.iter().any(|&(p, _)| p == b)
    }
}

/// Checks the write calls since the last check: one call at most (a miss's batch: at most
/// [`WRITE_BATCH`] blocks, ascending, none pinned) unless `flush`, every block written with
/// its latest bytes. Returns the blocks written.
fn check_writes(dev: &mut Watch, m: &Model, flush: bool) -> usize {
    let calls = core::mem::take(&mut dev.calls);
    if !flush {
        assert!(calls.len() <= 1, "a miss wrote {} times", calls.len());
    }
    let mut n = 0;
    for c in &calls {
        assert!(
            !c.is_empty() && c.len() <= WRITE_BATCH,
            "a batch of {}",
            c.len()
        );
        if !flush {
            assert!(c.windows(2).all(|w| w[0] < w[1]), "batch not sorted: {c:?}");
        }
        for &b in c {
            assert!(!m.pinned_block(b), "pinned block {b} written");
            let want = m.content[b as usize]
                .as_ref()
                .expect("a freed block written");
            assert!(dev.block(b) == &sealed(want)[..], "block {b} written stale");
        }
        n += c.len();
    }
    n
}

/// Every pinned frame still holds its block and its bytes.
fn check_pins<const N: usize>(c: &NodeCache<'_, N>, m: &Model) {
    for &(b, f) in &m.pinned {
        assert_eq!(c.block_of(f), b, "pinned frame {f} of block {b} evicted");
        let want = m.content[b as usize].as_ref().unwrap();
        assert!(
            sealed(c.frame(f)) == sealed(want),
            "pinned block {b} changed"
        );
    }
}

/// `find` finds exactly the blocks some frame holds, each in one frame.
fn check_index<const N: usize>(c: &mut NodeCache<'_, N>, blocks: u64) {
    let held: Vec<u64> = (0..N)
        .map(|f| c.block_of(f))
        .filter(|&b| b != u64::MAX)
        .collect();
    let set: BTreeSet<u64> = held.iter().copied().collect();
    assert_eq!(set.len(), held.len(), "a block in two frames");
    c.begin_op();
    for b in 0..blocks {
        match c.find(b) {
            Some(f) => assert_eq!(c.block_of(f), b),
            None => assert!(!set.contains(&b), "cached block {b} not found"),
        }
    }
    assert_eq!(c.find(u64::MAX), None);
    c.begin_op();
}

/// Random gets, creates, changes, discards, operation boundaries and flushes over `blocks`
/// blocks, checked step by step.
fn model_run<const N: usize>(seed: u64, blocks: u64, steps: u64) {
    let mut rng = Rng::new(seed);
    let mut dev = Watch::new(blocks);
    let mut m = Model {
        content: Vec::new(),
        pinned: Vec::new(),
    };
    let mut buf = vec![0u8; BLOCK_SIZE];
    for b in 0..blocks {
        fill(&mut buf, &mut rng);
        dev.disk
            .write(
                &[Run {
                    block: b,
                    data: &sealed(&buf),
                }],
                WriteFlags::NONE,
            )
            .unwrap();
        m.content.push(Some(buf.clone()));
    }
    let mut mem = vec![0u8; N * BLOCK_SIZE];
    let mut c = NodeCache::<N>::new(&mut mem).unwrap();
    c.begin_op();
    let (mut misses, mut early, mut last_new) = (0u64, 0u64, 0u64);
    for step in 0..steps {
        let before = c.stats();
        let all_pinned = m.pinned.len() == N;
        // Commits are rare enough that dirty frames fill the cache.
        if rng.below(20 * N as u64) == 0 {
            c.begin_op();
            m.pinned.clear();
            c.flush(&mut dev).unwrap();
            assert_eq!(c.dirty(), 0);
            let n = check_writes(&mut dev, &m, true) as u64;
            assert_eq!(c.stats().flushed - before.flushed, n);
            for (b, want) in m.content.iter().enumerate() {
                if let Some(want) = want {
                    assert!(dev.block(b as u64) == &sealed(want)[..], "block {b} lost");
                }
            }
            continue;
        }
        match rng.below(100) {
            // A new operation (always when every frame is pinned, but for a look first).
            r if r < 8 || (all_pinned && r >= 12) => {
                c.begin_op();
                m.pinned.clear();
            }
            // Get a block in use.
            r if r < 55 => {
                let b = rng.below(blocks);
                let Some(want) = m.content[b as usize].clone() else {
                    continue;
                };
                let was_pinned = m.pinned_block(b);
                match c.get(&mut dev, b, |_| Ok(())) {
                    Ok(f) => {
                        assert!(sealed(c.frame(f)) == sealed(&want), "block {b} read stale");
                        if was_pinned {
                            assert_eq!(c.stats().reads, before.reads, "pinned {b} read again");
                        } else {
                            m.pinned.push((b, f));
                        }
                    }
                    Err(e) => {
                        assert_eq!(e, FsError::Unsupported("node cache too small for the tree"));
                        assert!(
                            all_pinned && !was_pinned,
                            "miss refused with a frame unpinned"
                        );
                        assert!(dev.calls.is_empty(), "a refused miss wrote");
                    }
                }
            }
            // A new node at a freed block, or a copy over a block in use (discarded first).
            r if r < 70 => {
                if all_pinned {
                    continue;
                }
                // Often the block after the last one (as an allocator gives them): runs.
                let b = if rng.chance(50) {
                    (last_new + 1) % blocks
                } else {
                    rng.below(blocks)
                };
                last_new = b;
                m.pinned.retain(|&(p, _)| p != b);
                let f = c.create(&mut dev, b).unwrap();
                fill(&mut buf, &mut rng);
                c.frame_mut(f).copy_from_slice(&buf);
                m.content[b as usize] = Some(buf.clone());
                m.pinned.push((b, f));
            }
            // Change a pinned node.
            r if r < 88 => {
                if m.pinned.is_empty() {
                    continue;
                }
                let (b, f) = m.pinned[rng.below(m.pinned.len() as u64) as usize];
                let at = rng.below(node::DATA_END as u64 - 8) as usize;
                let v = rng.next().to_le_bytes();
                let (b2, f2) = m.pinned[rng.below(m.pinned.len() as u64) as usize];
                if f2 != f && rng.chance(20) {
                    let (x, y) = c.pair_mut(f, f2);
                    x[at..at + 8].copy_from_slice(&v);
                    y[at..at + 8].copy_from_slice(&v);
                    m.content[b2 as usize].as_mut().unwrap()[at..at + 8].copy_from_slice(&v);
                } else {
                    c.frame_mut(f)[at..at + 8].copy_from_slice(&v);
                }
                m.content[b as usize].as_mut().unwrap()[at..at + 8].copy_from_slice(&v);
            }
            // Free a node.
            _ => {
                let b = rng.below(blocks);
                c.discard(b);
                m.pinned.retain(|&(p, _)| p != b);
                m.content[b as usize] = None;
            }
        }
        let n = check_writes(&mut dev, &m, false) as u64;
        assert_eq!(
            c.stats().early_writes - before.early_writes,
            n,
            "early writes miscounted"
        );
        assert_eq!(dev.reads, c.stats().reads);
        misses += c.stats().reads - before.reads;
        early += n;
        check_pins(&c, &m);
        if step % 512 == 0 {
            check_index(&mut c, blocks);
            m.pinned.clear();
        }
    }
    // The run met what it is about: misses that evict, and dirty frames written early.
    assert!(misses > steps / 10, "{misses} misses");
    assert!(early > 0);
    // Nothing dirty was lost: after a flush the device holds every block's latest bytes.
    c.begin_op();
    m.pinned.clear();
    c.flush(&mut dev).unwrap();
    check_writes(&mut dev, &m, true);
    for (b, want) in m.content.iter().enumerate() {
        if let Some(want) = want {
            assert!(dev.block(b as u64) == &sealed(want)[..], "block {b} lost");
        }
    }
}

#[test]
fn model_fewest_frames() {
    for seed in 0..4 * scale() {
        model_run::<MIN_FRAMES>(seed, 64, 6000);
    }
}

#[test]
fn model_64_frames() {
    for seed in 0..2 * scale() {
        model_run::<64>(100 + seed, 200, 10_000);
    }
}

#[test]
fn model_1024_frames() {
    model_run::<1024>(200, 3000, 30_000 * scale());
}

/// Creates `count` dirty nodes from block `from`, each in an operation of its own.
fn create_dirty<const N: usize>(c: &mut NodeCache<'_, N>, dev: &mut Watch, from: u64, count: u64) {
    for b in from..from + count {
        c.begin_op();
        let f = c.create(dev, b).unwrap();
        node::init(c.frame_mut(f), 0, 1, b);
    }
}

/// With every frame dirty a miss writes back one batch of [`WRITE_BATCH`] in one call (one run
/// where frames and blocks are neighbours), and the next misses take the frames it cleaned without writing. A failed batch leaves every frame
/// dirty and is retried whole.
#[test]
fn dirty_victims_are_written_in_one_batch() {
    const N: usize = 64;
    let mut dev = Watch::new(1000);
    let mut mem = vec![0u8; N * BLOCK_SIZE];
    let mut c = NodeCache::<N>::new(&mut mem).unwrap();
    create_dirty(&mut c, &mut dev, 100, N as u64);
    assert_eq!(c.dirty(), N);
    assert!(dev.calls.is_empty());

    dev.fail_writes = true;
    c.begin_op();
    let e = c.create(&mut dev, 500).unwrap_err();
    assert!(
        matches!(
            e,
            FsError::Io {
                op: IoOp::WriteNode,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(c.dirty(), N, "a failed write-back cleaned a frame");
    assert_eq!(c.stats().early_writes, 0);
    for b in 100..100 + N as u64 {
        assert!(
            c.find(b).is_some(),
            "block {b} dropped by a failed write-back"
        );
    }

    dev.fail_writes = false;
    c.begin_op();
    c.create(&mut dev, 500).unwrap();
    assert_eq!(dev.calls.len(), 1);
    let batch = dev.calls[0].clone();
    assert_eq!(batch.len(), WRITE_BATCH);
    // Frames 1 to 16 hold blocks 101 to 116: one run.
    assert_eq!(batch, (101..117).collect::<Vec<u64>>());
    assert_eq!(dev.runs, [1]);
    assert!(batch.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(c.stats().early_writes, WRITE_BATCH as u64);
    assert_eq!(c.dirty(), N - WRITE_BATCH + 1);
    for &b in &batch {
        assert_eq!(node::check(dev.block(b), b), Ok(1), "block {b} not sealed");
    }
    // The other 15 cleaned frames serve the next misses (only the evicted frame's block can
    // be read back clean: the rest were dirty and are still cached).
    for k in 1..WRITE_BATCH as u64 {
        c.begin_op();
        c.create(&mut dev, 500 + k).unwrap();
    }
    assert_eq!(
        dev.calls.len(),
        1,
        "a miss wrote although clean frames were left"
    );
    for b in 100..100 + N as u64 {
        let cached = c.find(b).is_some();
        assert_eq!(cached, !batch.contains(&b), "block {b}");
    }
}

/// A miss with every frame pinned but one evicts that one (written back alone: the rest are
/// pinned), and with every frame pinned it fails without writing.
#[test]
fn all_pinned_but_one() {
    const N: usize = MIN_FRAMES;
    let mut dev = Watch::new(1000);
    let mut mem = vec![0u8; N * BLOCK_SIZE];
    let mut c = NodeCache::<N>::new(&mut mem).unwrap();
    create_dirty(&mut c, &mut dev, 10, 1);
    c.begin_op();
    for b in 20..20 + N as u64 - 1 {
        let f = c.create(&mut dev, b).unwrap();
        node::init(c.frame_mut(f), 0, 1, b);
    }
    c.create(&mut dev, 50).unwrap();
    assert_eq!(dev.calls, [vec![10u64]]);
    assert_eq!(c.stats().early_writes, 1);
    assert_eq!(
        c.create(&mut dev, 51),
        Err(FsError::Unsupported("node cache too small for the tree"))
    );
    assert_eq!(
        c.get(&mut dev, 10, |_| Ok(())),
        Err(FsError::Unsupported("node cache too small for the tree"))
    );
    assert_eq!(dev.calls.len(), 1);
    assert_eq!(dev.reads, 0);
    // The next operation may evict them all again.
    c.begin_op();
    let f = c
        .get(&mut dev, 10, |b| node::check(b, 10).map(|_| ()))
        .unwrap();
    assert_eq!(c.block_of(f), 10);
}

/// A read that fails, or a block that fails its check, gives its frame back: with one frame
/// empty, failed misses and then a miss that succeeds evict nothing.
#[test]
fn failed_reads_give_the_frame_back() {
    const N: usize = MIN_FRAMES;
    let mut dev = Watch::new(100);
    let mut mem = vec![0u8; N * BLOCK_SIZE];
    let mut c = NodeCache::<N>::new(&mut mem).unwrap();
    for b in 0..N as u64 - 1 {
        c.begin_op();
        c.get(&mut dev, b, |_| Ok(())).unwrap();
    }
    for _ in 0..3 * N {
        c.begin_op();
        assert!(c.get(&mut dev, 1000, |_| Ok(())).is_err());
        assert!(c.get(&mut dev, 50, |_| Err("bad")).is_err());
        assert!(c.find(50).is_none());
    }
    c.begin_op();
    c.get(&mut dev, 60, |_| Ok(())).unwrap();
    for b in 0..N as u64 - 1 {
        assert!(c.find(b).is_some(), "block {b} evicted with a frame empty");
    }
}

/// A relocated frame answers for its new block only, keeps its bytes, is dirty and goes out
/// to the new block; the old block is neither cached nor written; a frame that held the new
/// block before is dropped.
#[test]
fn relocate_moves_a_frame_to_its_new_block() {
    const N: usize = MIN_FRAMES;
    let mut dev = Watch::new(100);
    let mut mem = vec![0u8; N * BLOCK_SIZE];
    let mut c = NodeCache::<N>::new(&mut mem).unwrap();
    create_dirty(&mut c, &mut dev, 10, 2);
    c.flush(&mut dev).unwrap();
    dev.calls.clear();
    c.begin_op();
    let f = c.find(10).unwrap();
    let before = c.frame(f).to_vec();
    c.relocate(f, 11);
    assert_eq!(c.find(10), None);
    assert_eq!(
        c.find(11),
        Some(f),
        "the new block's earlier frame is dropped"
    );
    assert_eq!(c.block_of(f), 11);
    assert_eq!(c.frame(f), &before[..]);
    assert_eq!(c.dirty(), 1);
    c.flush(&mut dev).unwrap();
    assert_eq!(dev.calls, vec![vec![11]]);
    assert_eq!(dev.block(11), &sealed(&before)[..]);
}
