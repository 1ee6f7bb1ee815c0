//! Hostile-device tests: the whole path (see `stack.rs`) against a device model that answers
//! with random and adversarial used entries: ids out of range, never issued or repeated,
//! lengths out of range, garbage status bytes, the used index jumping ahead or going back,
//! completions held back or never sent, spurious interrupts, a changed configuration, a queue
//! that shrinks across a reset. Properties per case: no panic, no completion of a tag the
//! driver does not hold, every bio completes exactly once (success or a typed error), no
//! descriptor pointing outside the request's buffers or the driver's command memory, nothing
//! left in flight.
//!
//! `HOSTILE_CASES=N` runs N cases (default 10,000) and `HOSTILE_SEED=S` replays a run; the seed
//! is printed (`cargo test -p virtio-blk hostile -- --nocapture`) and named in every failure.

use core::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::string::String;
use std::vec::Vec;

use blk::{BioFlags, Op};

use crate::InitError;
use crate::stack::*;

/// The device's side of one hostile case: completions it holds back, the last entry it posted.
struct Adversary {
    /// `(id, len)` of chains served but not posted yet (forgotten when the device resets).
    held: Vec<(u32, u32)>,
    last: Option<(u32, u32)>,
    resets: u32,
    /// Whether this case may shrink the device's largest queue.
    may_kill: bool,
}

impl Adversary {
    /// One device action, mostly proper, often hostile.
    fn step(&mut self, s: &Stack, rng: &mut Rng) {
        let mut d = s.dev();
        if d.resets != self.resets {
            self.resets = d.resets;
            self.held.clear();
            self.last = None;
        }
        let size = u32::from(d.ring_size().max(1));
        match rng.below(100) {
            // Serve the next chain properly.
            0..=29 => {
                if let Some((head, len)) = d.take_chain(None) {
                    d.push_used(u32::from(head), len);
                    self.last = Some((u32::from(head), len));
                }
            }
            // Serve it, post later (out of order).
            30..=41 => {
                if let Some((head, len)) = d.take_chain(None) {
                    self.held.push((u32::from(head), len));
                }
            }
            // Serve it with a garbage status byte (0 = OK is possible too).
            42..=46 => {
                let st = rng.next() as u8;
                if let Some((head, len)) = d.take_chain(Some(st)) {
                    self.held.push((u32::from(head), len));
                }
            }
            // Post a held completion.
            47..=61 if !self.held.is_empty() => {
                let i = rng.below(self.held.len() as u64) as usize;
                let (id, len) = self.held.swap_remove(i);
                d.push_used(id, len);
                self.last = Some((id, len));
            }
            // Post a held completion with a length out of range.
            62..=65 if !self.held.is_empty() => {
                let i = rng.below(self.held.len() as u64) as usize;
                let (id, _) = self.held.swap_remove(i);
                let any = rng.next() as u32;
                let len = rng.pick(&[0, 1, 2, u32::MAX, any]);
                d.push_used(id, len);
            }
            // An id never issued, out of the ring, past 16 bits, or any.
            66..=71 => {
                let ids = [
                    rng.below(u64::from(size)) as u32,
                    size + rng.below(64) as u32,
                    0x1_0000 + rng.below(u64::from(size)) as u32,
                    rng.next() as u32,
                ];
                let id = rng.pick(&ids);
                d.push_used(id, rng.next() as u32);
            }
            // The last entry again (a repeated id).
            72..=75 => {
                if let Some((id, len)) = self.last {
                    d.push_used(id, len);
                }
            }
            // The used index jumps ahead (stale entries), up to twice the ring.
            76..=78 => {
                let idx = d.used_idx();
                d.set_used_idx(idx.wrapping_add(1 + rng.below(2 * u64::from(size)) as u16));
            }
            // The used index goes back.
            79..=80 => {
                let idx = d.used_idx();
                d.set_used_idx(idx.wrapping_sub(1 + rng.below(u64::from(size)) as u16));
            }
            // A completion that never comes (only a timeout recovers it).
            81..=83 => {
                let _ = d.take_chain(None);
            }
            // Garbage doorbell hint.
            84..=86 => d.set_avail_event(rng.next() as u16),
            // The configuration changes under the driver: capacity shrinks or grows.
            87..=88 => {
                let cap = rng.below(2 * SECTORS);
                d.config[0..8].copy_from_slice(&cap.to_le_bytes());
            }
            // Spurious interrupt.
            89..=93 => d.raise(),
            // The device's largest queue shrinks: the next reset cannot restore the ring and
            // the device is given up (a few times per run: each costs a new stack).
            94 if self.may_kill && rng.percent(5) => d.max_queue = rng.pick(&[2, 4, 8]),
            _ => {}
        }
        let fire = rng.percent(70);
        if fire {
            d.raise();
        }
        drop(d);
        if fire {
            s.reap();
        }
        if rng.percent(30) {
            s.tick();
        }
    }
}

/// Hostile cases from `HOSTILE_CASES` (default 10,000) and `HOSTILE_SEED` (default: from the
/// clock, printed).
fn hostile_params() -> (u64, u64) {
    let cases = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let seed = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    (cases, seed)
}

/// The device setups the cases draw from: three per largest-queue size (one polled), the
/// rest drawn once from a fixed seed. Each is built once, then reused case after case (DMA
/// memory is finite and the driver is `'static`).
fn setups() -> Vec<Setup> {
    let mut rng = Rng::new(0x5e7_095);
    let mut v = Vec::new();
    for max_queue in [2, 3, 4, 5, 8, 16, 32, 64, 100, 256, 1024] {
        // Too small: refused at bring-up, one setup each is enough.
        let variants = if max_queue < 4 { 1 } else { 3 };
        for k in 0..variants {
            let mut features = F_VERSION_1;
            for f in [F_SEG_MAX, F_SIZE_MAX, F_FLUSH, F_RING_EVENT_IDX] {
                if rng.percent(75) {
                    features |= f;
                }
            }
            v.push(Setup {
                max_queue,
                features,
                seg_max: rng.pick(&[1, 3, 16, 254]),
                size_max: rng.pick(&[512, PAGE as u32]),
                polled: k == 2,
            });
        }
    }
    v
}

/// Outcome counts of a hostile run.
#[derive(Debug, Default)]
struct Tally {
    bios: u64,
    bio_errors: u64,
    resets: u64,
    dead: u64,
    refused_setups: u64,
}

/// One case: bios of random shapes submitted between device actions, more hostile actions,
/// then a well-behaved device until everything completed; then the properties.
fn hostile_case(
    rng: &mut Rng,
    setups: &[Setup],
    stacks: &mut HashMapStacks,
    tally: &mut Tally,
) -> Result<(), String> {
    let setup = rng.pick(setups);
    let s = match stacks.get(&setup) {
        Some(s) => s,
        None => match setup.stack() {
            Ok(s) => {
                stacks.insert(setup, s);
                s
            }
            Err(InitError::RingTooSmall(n)) if setup.max_queue < 4 && n == setup.max_queue => {
                tally.refused_setups += 1;
                return Ok(());
            }
            Err(e) => return Err(format!("bring-up of {setup:?} failed: {e:?}")),
        },
    };
    ACTIVE.set(Some(s));
    reset_counters();
    {
        // The device behaves again at the start of a case, as it did at the end of the last.
        let mut d = s.dev();
        d.config[0..8].copy_from_slice(&SECTORS.to_le_bytes());
    }
    let resets = s.hw.stats().resets.load(Relaxed);
    let mut adv = Adversary {
        held: Vec::new(),
        last: None,
        resets: s.dev().resets,
        may_kill: tally.dead < 16,
    };
    let nbios = 1 + rng.below(MAX_BIOS as u64) as usize;
    let mut submitted = 0;
    for i in 0..nbios {
        let op = match rng.below(10) {
            0..=3 => Op::Read,
            4..=8 => Op::Write,
            _ => Op::Flush,
        };
        let flags = if op == Op::Write {
            rng.pick(&[
                BioFlags::empty(),
                BioFlags::empty(),
                BioFlags::FUA,
                BioFlags::PREFLUSH,
            ])
        } else {
            BioFlags::empty()
        };
        let mut segs = Vec::new();
        let mut bytes = 0u64;
        if op != Op::Flush {
            for k in 0..1 + rng.below(MAX_SEGS as u64) as usize {
                let len = 512 * (1 + rng.below(8) as u32);
                segs.push((2 * (i * MAX_SEGS + k), len));
                bytes += u64::from(len);
            }
        }
        let sector = if op == Op::Flush {
            0
        } else {
            rng.below(SECTORS - bytes / 512 + 1)
        };
        let b = s.bio(i, op, flags, sector, &segs);
        let _ = s.submit(b);
        submitted += 1;
        for _ in 0..rng.below(4) {
            adv.step(s, rng);
        }
    }
    for _ in 0..rng.below(60) {
        adv.step(s, rng);
    }
    // Whatever the device still holds is posted properly (or was lost: timeouts).
    {
        let mut d = s.dev();
        if d.resets == adv.resets {
            for (id, len) in adv.held.drain(..) {
                d.push_used(id, len);
            }
        }
        d.max_queue = setup.max_queue;
    }
    if !s.settle(submitted, 2_000) {
        let done: Vec<u32> = (0..submitted).map(|i| BIO_DONE[i].load(SeqCst)).collect();
        return Err(format!(
            "bios never completed ({setup:?}): completions {done:?}, driver in flight {}, tags {}",
            s.hw.in_flight(),
            s.q.tags_in_use()
        ));
    }
    s.check_idle(submitted)
        .map_err(|e| format!("{e} ({setup:?})"))?;
    tally.bios += submitted as u64;
    tally.bio_errors += (0..submitted)
        .map(|i| u64::from(BIO_ERR[i].load(SeqCst)))
        .sum::<u64>();
    tally.resets += s.hw.stats().resets.load(Relaxed) - resets;
    if s.hw.is_dead() {
        // Dead for good (its queue shrank): later cases get a fresh one.
        tally.dead += 1;
        stacks.remove(&setup);
    }
    ACTIVE.set(None);
    Ok(())
}

type HashMapStacks = std::collections::HashMap<Setup, &'static Stack>;

#[test]
fn hostile_device_never_breaks_the_completion_contract() {
    let _s = serial();
    let (cases, seed) = hostile_params();
    println!(
        "hostile: {cases} cases, seed {seed:#x} (rerun: HOSTILE_SEED={seed:#x} HOSTILE_CASES={cases})"
    );
    let t0 = std::time::Instant::now();
    let mut stacks = HashMapStacks::new();
    let mut tally = Tally::default();
    let mut rng = Rng::new(seed);
    let setups = setups();
    for case in 0..cases {
        if let Err(e) = hostile_case(&mut rng, &setups, &mut stacks, &mut tally) {
            panic!("hostile case {case} of seed {seed:#x} (HOSTILE_SEED={seed:#x}): {e}");
        }
    }
    println!("hostile: {cases} cases in {:.2?}: {tally:?}", t0.elapsed());
    assert!(tally.bios > cases / 2 && tally.resets > 0, "{tally:?}");
}
