//! Hostile-device fuzzing: the whole driver under a real `blk::Queue` against the fake HBA in
//! its hostile mode ([`crate::fake::Chaos`]): PxSACT/PxCI bits shown for slots the device does
//! not hold, error bits in PxIS with no command to blame, random PxTFD, garbage over the
//! received-FIS area, interrupts with nothing done, task-file and interface errors, commands
//! that never complete, and non-queued reads and writes that report success with a short
//! byte count. Each case submits a few reads, writes, FUA writes and flushes on distinct
//! blocks, drives the driver in a random order (device steps, interrupt handler, deferred
//! work, requeue kicks, timeout scans), then lets the device behave until every bio ended.
//!
//! Properties, per case: no panic; every bio ends exactly once; the driver never completes a
//! tag the block layer does not have in flight (`late_completions` stays 0); a read that ends
//! `Ok` holds exactly the disk's data and a write that ends `Ok` is on the disk (a short
//! transfer is never a success); afterwards driver and queue hold nothing and the port is not
//! dead (the fake never makes a reset fail).
//!
//! `HOSTILE_CASES=N` (default 10,000) and `HOSTILE_SEED=S` (default 12345; `random` takes one from the clock); the seed
//! is printed, and a failure names it and the case. To look into a failure: `HOSTILE_TRACE=C`
//! prints what case `C` did, `HOSTILE_MASK=M` keeps only the hostile behaviours whose bit is
//! set in `M` (in the order of [`Chaos`]'s fields after `seed`).

use std::panic::{AssertUnwindSafe, catch_unwind};

use blk::{BioFlags, BlkError, Op};
use hal::DmaBuf;

use crate::fake::{BLOCKS, Chaos, xorshift};
use crate::tests::{Env, NOW, env_with};

thread_local! {
    static TRACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

macro_rules! trace {
    ($($a:tt)*) => {
        if TRACE.with(|t| t.get()) {
            eprintln!($($a)*);
        }
    };
}

/// Cases per driver instance at least (a fresh fake and driver after that many).
const CASES_PER_ENV: u64 = 500;
/// Driver instances per run at most: each keeps its DMA memory (about 100 KiB) for the rest of
/// the process, out of the 16 MiB test region.
const MAX_ENVS: u64 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    FuaWrite,
    Flush,
}

/// What one case did, added up over the run.
#[derive(Default, Debug)]
struct Totals {
    bios: u64,
    ok: u64,
    failed: u64,
    timeouts_scanned: u64,
    recoveries: u64,
    port_resets: u64,
    short_transfers: u64,
}

impl Totals {
    /// Adds the counters of the driver of `e`.
    fn add_driver(&mut self, e: &Env) {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let s = e.hw.stats();
        self.recoveries += get(&s.recoveries);
        self.port_resets += get(&s.port_resets);
        self.short_transfers += get(&s.short_transfers);
    }
}

fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for c in buf.chunks_exact_mut(8) {
        c.copy_from_slice(&xorshift(&mut x).to_le_bytes());
    }
}

fn advance(ns: u64) -> u64 {
    NOW.with(|c| {
        c.set(c.get() + ns);
        c.get()
    })
}

/// One case on `e`; `Err` describes a broken property.
fn case(e: &Env, seed: u64, totals: &mut Totals) -> Result<(), String> {
    let mut x = seed | 1;
    let mut r = |n: u64| xorshift(&mut x) % n;
    e.fake.set_chaos(None);
    e.fake.clear_faults();
    e.ends.lock().unwrap().clear();
    let late0 = e.q.stats().snapshot().late_completions;
    // Up to 10 bios on distinct 4 KiB blocks.
    let n = 1 + r(10) as usize;
    let mut blocks: Vec<u64> = Vec::new();
    while blocks.len() < n {
        let b = r(BLOCKS / 8 - 1) * 8;
        if !blocks.contains(&b) {
            blocks.push(b);
        }
    }
    let mut ios: Vec<(Kind, u64, DmaBuf, Vec<u8>)> = Vec::new();
    for (i, &lba) in blocks.iter().enumerate() {
        let kind = match r(10) {
            0..=4 => Kind::Read,
            5..=7 => Kind::Write,
            8 => Kind::FuaWrite,
            _ => Kind::Flush,
        };
        let mut data = vec![0u8; 4096];
        fill(&mut data, seed ^ (i as u64 + 1) << 32);
        let mut buf = DmaBuf::alloc(4096, 4096).map_err(|e| format!("DMA: {e:?}"))?;
        if kind == Kind::Read {
            e.fake.set_disk(lba, &data);
            buf.as_mut_slice().fill(0xee);
        } else {
            e.fake.set_disk(lba, &[0u8; 4096]);
            buf.as_mut_slice().copy_from_slice(&data);
        }
        ios.push((kind, lba, buf, data));
    }
    let hostile = r(8) != 0;
    let mask: u32 = std::env::var("HOSTILE_MASK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(!0);
    let mut k = 0;
    let mut odds = |r: &mut dyn FnMut(u64) -> u64, max: u64| {
        k += 1;
        let v = r(max + 1) as u16;
        if hostile && mask & (1 << (k - 1)) != 0 {
            v
        } else {
            0
        }
    };
    let chaos = Chaos {
        seed: xorshift(&mut (seed ^ 0x5eed)) | 1,
        spurious_is: odds(&mut r, 60),
        error_is: odds(&mut r, 8),
        noise: odds(&mut r, 150),
        tfd: odds(&mut r, 6),
        rfis: odds(&mut r, 60),
        short: odds(&mut r, 250),
        task_file: odds(&mut r, 60),
        interface: odds(&mut r, 25),
        hang: odds(&mut r, 25),
    };
    e.fake.set_chaos(Some(chaos));
    // Hostile phase: submissions and driver entry points in a random order.
    let mut next = 0;
    for _ in 0..(20 + r(40)) {
        match r(8) {
            0 | 1 if next < ios.len() => {
                let (kind, lba, buf, _) = &ios[next];
                let (op, flags) = match kind {
                    Kind::Read => (Op::Read, BioFlags::empty()),
                    Kind::Write => (Op::Write, BioFlags::empty()),
                    Kind::FuaWrite => (Op::Write, BioFlags::FUA),
                    Kind::Flush => (Op::Flush, BioFlags::empty()),
                };
                let buf = (*kind != Kind::Flush).then_some(buf);
                trace!("submit {next} {kind:?} lba {lba}");
                e.submit(next, op, flags, *lba, buf);
                next += 1;
            }
            2 => {
                trace!("irq");
                // An interrupt, taken or spurious.
                if e.fake.take_irq() || r(4) == 0 {
                    e.hw.handle_irq();
                }
            }
            3 => {
                trace!("deferred");
                e.hw.deferred()
            }
            4 => {
                trace!("kick");
                e.q.kick()
            }
            5 if r(4) == 0 => {
                let now = advance(r(1_500));
                trace!("timeouts at {now}");
                totals.timeouts_scanned += e.q.check_timeouts(now) as u64;
            }
            _ => {}
        }
        e.fake.step();
        trace!("  log {:?}", e.fake.log().last());
        trace!("  completions {:?}", e.rec.log.lock().unwrap().last());
    }
    trace!("calm");
    while next < ios.len() {
        let (kind, lba, buf, _) = &ios[next];
        let (op, flags) = match kind {
            Kind::Read => (Op::Read, BioFlags::empty()),
            Kind::Write => (Op::Write, BioFlags::empty()),
            Kind::FuaWrite => (Op::Write, BioFlags::FUA),
            Kind::Flush => (Op::Flush, BioFlags::empty()),
        };
        let buf = (*kind != Kind::Flush).then_some(buf);
        e.submit(next, op, flags, *lba, buf);
        next += 1;
    }
    // Calm phase: the device behaves; timeouts take what it dropped.
    e.fake.set_chaos(None);
    e.fake.clear_faults();
    let mut rounds = 0;
    while e.ends.lock().unwrap().len() < ios.len() || e.q.tags_in_use() != 0 {
        rounds += 1;
        if rounds > 200 {
            return Err(format!(
                "{} of {} bios ended after 200 calm rounds (driver holds {}, queue {} tags)",
                e.ends.lock().unwrap().len(),
                ios.len(),
                e.hw.in_flight(),
                e.q.tags_in_use()
            ));
        }
        e.settle();
        let now = advance(2_000);
        totals.timeouts_scanned += e.q.check_timeouts(now) as u64;
        e.fake.step();
    }
    e.settle();
    // Properties.
    let ends = e.ends();
    let ids: Vec<usize> = ends.iter().map(|x| x.0).collect();
    if ids != (0..ios.len()).collect::<Vec<_>>() {
        return Err(format!(
            "bios ended {ids:?}, expected each of 0..{} once",
            ios.len()
        ));
    }
    let late = e.q.stats().snapshot().late_completions - late0;
    if late != 0 {
        return Err(format!("{late} completions of tags not in flight"));
    }
    for (i, (kind, lba, buf, data)) in ios.iter().enumerate() {
        totals.bios += 1;
        match ends[i].1 {
            Ok(()) => {
                totals.ok += 1;
                match kind {
                    Kind::Read if buf.as_slice() != &data[..] => {
                        return Err(format!("read {i} of block {lba} ended Ok with wrong data"));
                    }
                    Kind::Write | Kind::FuaWrite if e.fake.disk(*lba, 4096) != *data => {
                        return Err(format!(
                            "write {i} of block {lba} ended Ok, not on the disk"
                        ));
                    }
                    _ => {}
                }
            }
            Err(BlkError::Io | BlkError::Timeout) => totals.failed += 1,
            Err(err) => return Err(format!("bio {i} ended with {err:?}")),
        }
    }
    if e.hw.in_flight() != 0 || e.q.tags_in_use() != 0 {
        return Err(format!(
            "left in flight: driver {}, queue {}",
            e.hw.in_flight(),
            e.q.tags_in_use()
        ));
    }
    if e.hw.is_dead() {
        return Err("port dead".into());
    }
    Ok(())
}

#[test]
fn hostile_device_every_request_completes_exactly_once() {
    let cases: u64 = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // A fixed seed by default, so a CI run is reproducible; `HOSTILE_SEED=random` explores.
    let seed: u64 = match std::env::var("HOSTILE_SEED").ok().as_deref() {
        Some("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        Some(s) => s.parse().unwrap_or(12345),
        None => 12345,
    };
    println!("ahci hostile device: HOSTILE_SEED={seed} HOSTILE_CASES={cases}");
    let mut totals = Totals::default();
    let mut env: Option<Env> = None;
    let per_env = CASES_PER_ENV.max(cases.div_ceil(MAX_ENVS));
    for c in 0..cases {
        if c.is_multiple_of(per_env) {
            if let Some(e) = &env {
                totals.add_driver(e);
            }
            // Half the drivers see a disk without NCQ (every read and write non-queued).
            env = Some(env_with((c / per_env).is_multiple_of(2)));
        }
        let e = env.as_ref().expect("made above");
        let mut case_seed = seed.wrapping_add(c.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
        xorshift(&mut case_seed);
        TRACE.with(|t| t.set(std::env::var("HOSTILE_TRACE").ok() == Some(c.to_string())));
        let res = catch_unwind(AssertUnwindSafe(|| case(e, case_seed, &mut totals)));
        match res {
            Ok(Ok(())) => {}
            Ok(Err(m)) => panic!("case {c} (HOSTILE_SEED={seed}): {m}"),
            Err(_) => panic!("case {c} (HOSTILE_SEED={seed}) panicked"),
        }
    }
    if let Some(e) = &env {
        totals.add_driver(e);
    }
    println!(
        "ahci hostile device: {cases} cases, {} bios: {} ok, {} failed (Io or Timeout); {} timeouts, {} recoveries, {} port resets, {} short transfers caught",
        totals.bios,
        totals.ok,
        totals.failed,
        totals.timeouts_scanned,
        totals.recoveries,
        totals.port_resets,
        totals.short_transfers,
    );
}
