//! Device-mapper devices in the kernel: tables from the command line (`dm=<name>:<table>`,
//! several allowed) and from [`create`], over devices of the registry, registered in it under
//! their own name (`dm-0`, `dm-1`, ... when the name is empty). The pools they use (split and
//! flush clones, dm-io) are their own statics, sized here.
//!
//! Command-line form: the table is the dmsetup text with lines separated by `;` or `,`; its
//! words are separated by spaces when the whole `dm="..."` value is quoted, or by `_` (so that
//! the table is one word: `dm=st:0_32768_striped_2_128_vda1_0_nvme0n1p1_0`). Names must not
//! contain `_`, `:`, `"` or spaces.
//!
//! Mirrors report leg failures from process context ([`run_deferred`], called by the block
//! wait hook): a failed leg is logged once, with the mirror's state, when it happens.

use core::fmt::Write;
use core::sync::atomic::{AtomicUsize, Ordering};

use blk::dm::io::{DmIo, RegionIo};
use blk::dm::mirror::{LegWrite, Mirror};
use blk::dm::table::{self, Lower, TableError};
use blk::dm::{DmDevice, DmEnv};
use blk::{BioSet, BioSlab, BlkError, BlockDevice, BvecPools, BvecSlabs, Wait};
use spin::{Mutex, Once};

use super::registry::{self, Name};
use super::setup_errors;
use super::{cpu_ctx, wait};

/// Mapped devices at most.
pub const MAX_DM: usize = 8;
/// Bytes of a table text kept with its device.
pub const TABLE_BYTES: usize = 256;

/// Why a mapped device was not created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateError {
    /// The table was refused (line, what, word).
    Table(TableError),
    /// A registered device has this name already.
    NameTaken,
    /// The name is empty after `dm=`, too long, or has a forbidden character.
    BadName,
    /// [`MAX_DM`] devices exist already, or the registry is full.
    Full,
    /// The reserves of the mapped devices' pools could not be filled.
    Pools(BlkError),
}

impl core::fmt::Display for CreateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CreateError::Table(e) => write!(f, "table refused: {}", e),
            CreateError::NameTaken => write!(f, "the name is taken"),
            CreateError::BadName => write!(f, "bad name"),
            CreateError::Full => write!(f, "no room for another device"),
            CreateError::Pools(e) => write!(f, "pool reserves not filled: {:?}", e),
        }
    }
}

/// Split and flush-clone bios of every mapped device (reserve: a flush clones to every leg of
/// every line while holding the others).
static SPLIT_SLAB: BioSlab<(), 96> = BioSlab::new();
static SPLIT_BVEC_SLABS: BvecSlabs<16, 16, 16, 8, 4, 4> = BvecSlabs::new();
static SPLIT_BVECS: BvecPools = BvecPools::new(&SPLIT_BVEC_SLABS, 1);
static SPLIT_SET: BioSet<()> = BioSet::new(&SPLIT_SLAB, 40, Some(&SPLIT_BVECS));

/// The clones of mirror writes with every leg in sync (taken without waiting; a write that
/// finds none free goes through dm-io). A mirror keeps up to `KEEP_SLOTS` (32) of them for its
/// next writes: 256 covers the kept clones of six 2-leg mirrors and the writes in flight.
static MIRROR_SLAB: BioSlab<LegWrite, 256> = BioSlab::new();
static MIRROR_BVEC_SLABS: BvecSlabs<16, 16, 16, 8, 4, 4> = BvecSlabs::new();
static MIRROR_BVECS: BvecPools = BvecPools::new(&MIRROR_BVEC_SLABS, 1);
static MIRROR_SET: BioSet<LegWrite> = BioSet::new(&MIRROR_SLAB, 8, Some(&MIRROR_BVECS));

/// dm-io's bios: a reserve covering one call of the largest size (a 1 MiB bio cut to 128 KiB
/// pieces, to four legs).
static IO_SLAB: BioSlab<RegionIo, 160> = BioSlab::new();
static IO_BVEC_SLABS: BvecSlabs<32, 32, 32, 32, 32, 8> = BvecSlabs::new();
static IO_BVECS: BvecPools = BvecPools::new(&IO_BVEC_SLABS, 2);
static IO_SET: BioSet<RegionIo> = BioSet::new(&IO_SLAB, 32, Some(&IO_BVECS));
/// The dm-io client of the kernel (mirrors, resync, tests).
pub static DM_IO: DmIo = DmIo::new(&IO_SET);

struct Slot {
    dev: DmDevice,
    table: heapless::String<TABLE_BYTES>,
}

static DEVS: [Once<Slot>; MAX_DM] = [const { Once::new() }; MAX_DM];
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// Serialises creation (the registry fills in order).
static CREATE: Mutex<()> = Mutex::new(());

/// What mapped devices built here use: their split set, dm-io client and wait hook (also for
/// devices built outside the registry, e.g. by tests).
pub fn env() -> DmEnv {
    DmEnv {
        split_set: &SPLIT_SET,
        mirror_set: &MIRROR_SET,
        io: &DM_IO,
        wait: Wait::Hook(wait),
    }
}

/// The mapped devices created so far.
pub fn devices() -> impl Iterator<Item = &'static DmDevice> {
    DEVS[..COUNT.load(Ordering::Acquire)]
        .iter()
        .filter_map(|s| s.get().map(|s| &s.dev))
}

/// The mapped device called `name`.
pub fn find(name: &str) -> Option<&'static DmDevice> {
    let d = registry::find(name)?;
    let registry::DevKind::Mapped(i) = d.kind else {
        return None;
    };
    DEVS.get(i)?.get().map(|s| &s.dev)
}

/// The table text of mapped device `index` (as given, `_` turned to spaces).
pub fn table_text(index: usize) -> Option<&'static str> {
    DEVS.get(index)?.get().map(|s| s.table.as_str())
}

/// The first mirror of the mapped device called `name`.
pub fn mirror(name: &str) -> Option<&'static Mirror> {
    find(name)?.mirrors().next()
}

fn resolve(name: &str) -> Option<Lower> {
    let d = registry::find(name)?;
    Some(Lower {
        dev: d.dev,
        limits: d.limits,
    })
}

/// Creates a mapped device `name` (empty: `dm-N`) from `table` (dmsetup text, lines separated
/// by newline, `;` or `,`), registers it, scans it for a partition table (registering
/// `<name>p1`, ...) and returns its registry entry.
pub fn create(name: &str, table: &str) -> Result<&'static registry::Device, CreateError> {
    let _g = CREATE.lock();
    let k = COUNT.load(Ordering::Acquire);
    let mut n = Name::new();
    if name.is_empty() {
        let _ = write!(n, "dm-{}", k);
    } else {
        if name.contains(|c: char| c == '_' || c == ':' || c == '"' || c.is_whitespace()) {
            return Err(CreateError::BadName);
        }
        n.push_str(name).map_err(|_| CreateError::BadName)?;
    }
    if registry::find(&n).is_some() {
        return Err(CreateError::NameTaken);
    }
    // The table is checked before the room for it: a bad table is reported as such (its
    // line and what is wrong) whether or not the registry is full.
    let parsed = table::parse(table, &mut resolve).map_err(CreateError::Table)?;
    if k == MAX_DM {
        return Err(CreateError::Full);
    }
    SPLIT_SET
        .init()
        .and_then(|_| IO_SET.init())
        .and_then(|_| MIRROR_SET.init())
        .map_err(CreateError::Pools)?;
    let mut text = heapless::String::new();
    for c in table.chars() {
        if text.push(c).is_err() {
            break;
        }
    }
    let slot = DEVS[k].call_once(|| Slot {
        dev: DmDevice::new(parsed, env()),
        table: text,
    });
    COUNT.store(k + 1, Ordering::Release);
    let dev: &'static DmDevice = &slot.dev;
    for m in dev.mirrors() {
        sync_mirror(&n, m);
    }
    let d = registry::add_mapped(n, k, dev, *dev.limits(), dev.stats()).ok_or(CreateError::Full)?;
    if let Some(i) = registry::index_of(&d.name) {
        registry::scan_mapped(i);
    }
    Ok(d)
}

/// Bytes of the buffer a mirror's resync at creation copies through.
const RESYNC_BUF: usize = 64 << 10;

/// A new mirror's legs: trusted (`nosync`, said so), or copied from the primary now (`sync`,
/// the default). A resync that fails leaves the legs it could not copy out of service
/// (logged; the device is created degraded).
fn sync_mirror(name: &str, m: &'static Mirror) {
    if m.created_nosync() {
        if m.legs().len() > 1 {
            defmt::warn!(
                "dm: {=str}: mirror legs trusted to be identical (nosync): not checked, not copied",
                name
            );
        }
        return;
    }
    let legs = m.resyncing_mask().count_ones();
    if legs == 0 {
        return;
    }
    let buf = hal::DmaBuf::alloc(RESYNC_BUF, 4096).map(blk::mem::DmaRegion::from_dma_buf);
    let result = match buf {
        Ok(mut buf) => m.resync(cpu_ctx(), &mut buf, wait),
        Err(e) => {
            setup_errors::record(format_args!(
                "dm: {}: no DMA memory for the resync ({:?}): legs stay out of sync",
                name, e
            ));
            return;
        }
    };
    match result {
        Ok(r) => defmt::println!(
            "dm: {=str}: {=u32} mirror legs resynced from the primary (sync): {=u64} regions copied in {=u32} passes",
            name,
            legs,
            r.regions_copied,
            r.passes
        ),
        Err(e) => {
            setup_errors::record(format_args!(
                "dm: {}: mirror resync failed: {:?}; {} of {} legs in sync",
                name,
                e,
                m.status().in_sync,
                m.legs().len()
            ));
        }
    }
}

/// Creates every `dm=<name>:<table>` of the command line, in order (a table may name devices
/// made by an earlier `dm=`). Refusals are logged and recorded ([`setup_errors`]: the test
/// run fails on them, run mode lists them after the devices); the boot goes on.
pub fn create_from_cmdline(cmdline: &str) {
    let mut rest = cmdline;
    while let Some(at) = find_word(rest, "dm=") {
        let after = &rest[at + 3..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        rest = next;
        let Some((name, table)) = value.split_once(':') else {
            setup_errors::record(format_args!(
                "dm={}: refused: expected dm=<name>:<table>",
                value
            ));
            continue;
        };
        let mut text = heapless::String::<TABLE_BYTES>::new();
        for c in table.chars() {
            let c = if c == '_' { ' ' } else { c };
            if text.push(c).is_err() {
                setup_errors::record(format_args!(
                    "dm={}: table longer than {} bytes",
                    name, TABLE_BYTES
                ));
                break;
            }
        }
        match create(name, &text) {
            Ok(d) => defmt::println!(
                "dm: {=str} created: {=u64} sectors, table \"{=str}\"",
                d.name.as_str(),
                d.sectors,
                text.as_str()
            ),
            Err(e) => {
                setup_errors::record(format_args!("dm={}: not created: {}", name, e));
            }
        }
    }
}

/// The byte index of the first word of `s` starting with `prefix`.
fn find_word(s: &str, prefix: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find(prefix) {
        let at = from + i;
        if at == 0 || s.as_bytes()[at - 1].is_ascii_whitespace() {
            return Some(at);
        }
        from = at + prefix.len();
    }
    None
}

/// Mirror work that waits for process context: reads to retry on another leg, and the log of
/// legs that failed. Called by the block wait hook; one load when nothing is mapped.
#[inline]
pub fn run_deferred() {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    deferred_work();
}

#[inline(never)]
fn deferred_work() {
    for (i, d) in devices().enumerate() {
        d.run_deferred(cpu_ctx());
        for m in d.mirrors() {
            if m.take_events() != 0 {
                log_mirror(i, m);
            }
        }
    }
}

/// Logs a mirror's state (after a leg failed, or on demand).
pub fn log_mirror(index: usize, m: &Mirror) {
    let st = m.status();
    let name = registry::devices()
        .find(|d| matches!(d.kind, registry::DevKind::Mapped(i) if i == index))
        .map_or("?", |d| d.name.as_str());
    for (leg, l) in m.legs().iter().enumerate() {
        let leg_name = registry::devices()
            .find(|d| core::ptr::addr_eq(d.dev as *const dyn BlockDevice, l.lower.dev))
            .map_or("?", |d| d.name.as_str());
        defmt::warn!(
            "dm: {=str}: leg {=usize} ({=str}) {}",
            name,
            leg,
            leg_name,
            defmt::Debug2Format(&st.state[leg])
        );
    }
    if st.degraded() {
        defmt::warn!(
            "dm: {=str} DEGRADED: {=usize} of {=usize} legs in sync, {=usize} dirty regions of {=u64} sectors; write errors {=u64}, read errors {=u64}",
            name,
            st.in_sync,
            st.legs,
            st.dirty_regions,
            st.region_sectors,
            st.write_errors,
            st.read_errors
        );
    } else {
        defmt::println!("dm: {=str}: all {=usize} legs in sync", name, st.legs);
    }
}
