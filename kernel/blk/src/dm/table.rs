//! Tables in the dmsetup line format: `<start> <length> <target> <args...>` per line, in
//! 512-byte sectors, lines separated by a newline, `;` or `,` (the last two so that a table
//! fits in one kernel command-line word).
//!
//! Targets and their arguments:
//!
//! | target | arguments |
//! |---|---|
//! | `linear` | `<dev> <offset>` |
//! | `striped` | `<#stripes> <chunk_sectors> <dev> <offset> ...` (one pair per stripe) |
//! | `mirror` | `core <#log_args> <region_sectors> [sync\|nosync] <#legs> <dev> <offset> ... [1 handle_errors]` |
//! | `error` | none |
//! | `zero` | none |
//!
//! Devices are looked up by name through a resolver the caller gives (the kernel's registry).
//! Lines must cover the device from sector 0 without gap or overlap.

use core::fmt;

use crate::bio::SECTOR_SHIFT;
use crate::device::BlockDevice;
use crate::limits::QueueLimits;

/// Lines a table holds at most.
pub const MAX_TARGETS: usize = 8;
/// Legs of a striped or mirror target at most.
pub const MAX_LEGS: usize = 4;
/// Bytes of the offending word kept in a [`TableError`].
pub const TOKEN_BYTES: usize = 24;

/// A device a table names, with the queue limits bios to it meet in the end.
#[derive(Clone, Copy)]
pub struct Lower {
    /// The device.
    pub dev: &'static dyn BlockDevice,
    /// Its limits (what dm-io splits to).
    pub limits: QueueLimits,
}

impl fmt::Debug for Lower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lower({} sectors)", self.dev.capacity())
    }
}

/// A device and the sector of it where a target's data begins.
#[derive(Clone, Copy, Debug)]
pub struct Leg {
    /// The device.
    pub lower: Lower,
    /// First sector used on it.
    pub offset: u64,
}

/// What one line maps to.
#[derive(Clone, Debug)]
pub enum TargetKind {
    /// `linear <dev> <offset>`.
    Linear(Leg),
    /// `striped <#stripes> <chunk> <dev> <offset>...`.
    Striped {
        /// Chunk size in sectors (a power of two).
        chunk: u64,
        /// The stripes, in order.
        legs: heapless::Vec<Leg, MAX_LEGS>,
    },
    /// `mirror core <#log_args> <region> [sync|nosync] <#legs> <dev> <offset>...`.
    Mirror {
        /// Region size in sectors (a power of two): the unit of the dirty bitmap.
        region: u64,
        /// `nosync`: the legs are known to be identical (nothing to resync at creation).
        nosync: bool,
        /// The legs.
        legs: heapless::Vec<Leg, MAX_LEGS>,
    },
    /// Every I/O fails.
    Error,
    /// Reads return zeroes, writes are dropped.
    Zero,
}

/// One parsed line.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    /// First sector of the mapped device it covers.
    pub start: u64,
    /// Sectors it covers.
    pub len: u64,
    /// What they map to.
    pub kind: TargetKind,
}

/// A parsed table: lines in order, covering `[0, len)`.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// The lines.
    pub targets: heapless::Vec<TargetSpec, MAX_TARGETS>,
}

impl Table {
    /// Sectors the table covers.
    pub fn len(&self) -> u64 {
        self.targets.last().map_or(0, |t| t.start + t.len)
    }

    /// Whether the table has no line.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// Why a table was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableErrorKind {
    /// No line at all.
    Empty,
    /// A word that should be a number is not one (or does not fit in 64 bits).
    BadNumber,
    /// The target name is none of `linear`, `striped`, `mirror`, `error`, `zero`.
    UnknownTarget,
    /// The line ends before the target's arguments do.
    MissingArgs,
    /// Words after the target's last argument.
    ExtraArgs,
    /// The line starts after the end of the previous one (sector where it should start).
    Gap(u64),
    /// The line starts before the end of the previous one (sector where it should start).
    Overlap(u64),
    /// A line of zero sectors.
    ZeroLength,
    /// The length does not fit the target: a striped length not a multiple of
    /// `chunk * stripes`.
    LengthMismatch,
    /// A device name the resolver does not know.
    DeviceNotFound,
    /// A device too small for `offset + length` (or the striped share of it).
    DeviceTooSmall,
    /// More legs than [`MAX_LEGS`] (or zero legs).
    TooManyLegs,
    /// More lines than [`MAX_TARGETS`].
    TooManyTargets,
    /// An argument with a wrong value: chunk or region size not a power of two, an unknown
    /// log type or option.
    BadArgument,
    /// A start, length, offset or chunk not a multiple of a device's logical block size, or a
    /// line's start or length not in whole blocks of the mapped device (whose block is the
    /// largest of its devices': a 512-byte device mixed with a 4 KiB one makes a 4 KiB device).
    Misaligned,
}

/// A refused table: the line (1-based), what is wrong, and the word at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableError {
    /// Line number, from 1.
    pub line: usize,
    /// What is wrong.
    pub kind: TableErrorKind,
    /// The offending word (cut to [`TOKEN_BYTES`]), empty when none applies.
    pub token: heapless::String<TOKEN_BYTES>,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {:?}", self.line, self.kind)?;
        if !self.token.is_empty() {
            write!(f, " at \"{}\"", self.token)?;
        }
        Ok(())
    }
}

fn err(line: usize, kind: TableErrorKind, token: &str) -> TableError {
    let mut t = heapless::String::new();
    for c in token.chars() {
        if t.push(c).is_err() {
            break;
        }
    }
    TableError {
        line,
        kind,
        token: t,
    }
}

/// The words of one line.
struct Words<'a> {
    it: core::str::SplitAsciiWhitespace<'a>,
    line: usize,
}

impl<'a> Words<'a> {
    fn word(&mut self) -> Result<&'a str, TableError> {
        self.it
            .next()
            .ok_or_else(|| err(self.line, TableErrorKind::MissingArgs, ""))
    }
    fn num(&mut self) -> Result<u64, TableError> {
        let w = self.word()?;
        parse_u64(w).ok_or_else(|| err(self.line, TableErrorKind::BadNumber, w))
    }
    fn end(&mut self) -> Result<(), TableError> {
        match self.it.next() {
            None => Ok(()),
            Some(w) => Err(err(self.line, TableErrorKind::ExtraArgs, w)),
        }
    }
}

/// A decimal number (digits only).
fn parse_u64(w: &str) -> Option<u64> {
    if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    w.parse().ok()
}

fn lbs_sectors(l: &Lower) -> u64 {
    (l.dev.logical_block_size() >> SECTOR_SHIFT).max(1) as u64
}

/// Parses `text` (lines separated by newline, `;` or `,`), looking devices up with
/// `resolve`. Blank lines are skipped.
pub fn parse(
    text: &str,
    resolve: &mut dyn FnMut(&str) -> Option<Lower>,
) -> Result<Table, TableError> {
    let mut table = Table::default();
    let mut next = 0u64;
    // Per line kept: its number, length word and block size in sectors (for the check of
    // every line against the largest block).
    let mut seen = heapless::Vec::<(usize, &str, u64), MAX_TARGETS>::new();
    for (i, raw) in text.split(['\n', ';', ',']).enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let mut w = Words {
            it: raw.split_ascii_whitespace(),
            line,
        };
        let start = w.num()?;
        let start_word = raw.split_ascii_whitespace().next().unwrap_or("");
        let len_word = raw.split_ascii_whitespace().nth(1).unwrap_or("");
        let len = w.num()?;
        if start > next {
            return Err(err(line, TableErrorKind::Gap(next), start_word));
        }
        if start < next {
            return Err(err(line, TableErrorKind::Overlap(next), start_word));
        }
        if len == 0 {
            return Err(err(line, TableErrorKind::ZeroLength, len_word));
        }
        let end = start
            .checked_add(len)
            .ok_or_else(|| err(line, TableErrorKind::BadNumber, len_word))?;
        let target = w.word()?;
        let kind = match target {
            "linear" => {
                let leg = parse_leg(&mut w, resolve, len)?;
                w.end()?;
                TargetKind::Linear(leg)
            }
            "striped" => {
                let n_word = raw.split_ascii_whitespace().nth(3).unwrap_or("");
                let n = w.num()?;
                if n == 0 || n > MAX_LEGS as u64 {
                    return Err(err(line, TableErrorKind::TooManyLegs, n_word));
                }
                let chunk_word = raw.split_ascii_whitespace().nth(4).unwrap_or("");
                let chunk = w.num()?;
                if !chunk.is_power_of_two() {
                    return Err(err(line, TableErrorKind::BadArgument, chunk_word));
                }
                if !len.is_multiple_of(chunk * n) {
                    return Err(err(line, TableErrorKind::LengthMismatch, len_word));
                }
                let mut legs = heapless::Vec::new();
                for _ in 0..n {
                    let leg = parse_leg(&mut w, resolve, len / n)?;
                    if !chunk.is_multiple_of(lbs_sectors(&leg.lower)) {
                        return Err(err(line, TableErrorKind::Misaligned, chunk_word));
                    }
                    let _ = legs.push(leg);
                }
                w.end()?;
                TargetKind::Striped { chunk, legs }
            }
            "mirror" => parse_mirror(&mut w, raw, resolve, len)?,
            "error" => {
                w.end()?;
                TargetKind::Error
            }
            "zero" => {
                w.end()?;
                TargetKind::Zero
            }
            other => return Err(err(line, TableErrorKind::UnknownTarget, other)),
        };
        // Every device the line names addresses in its own blocks: the line's start and
        // length must be whole blocks of each.
        let lbs = match &kind {
            TargetKind::Linear(l) => lbs_sectors(&l.lower),
            TargetKind::Striped { legs, .. } | TargetKind::Mirror { legs, .. } => legs
                .iter()
                .map(|l| lbs_sectors(&l.lower))
                .max()
                .unwrap_or(1),
            TargetKind::Error | TargetKind::Zero => 1,
        };
        if !start.is_multiple_of(lbs) || !len.is_multiple_of(lbs) {
            return Err(err(line, TableErrorKind::Misaligned, len_word));
        }
        table
            .targets
            .push(TargetSpec { start, len, kind })
            .map_err(|_| err(line, TableErrorKind::TooManyTargets, target))?;
        let _ = seen.push((line, len_word, lbs));
        next = end;
    }
    if table.targets.is_empty() {
        return Err(err(0, TableErrorKind::Empty, ""));
    }
    // The mapped device's block is the largest of its devices': every line must be in whole
    // blocks of it, or I/O in its blocks would cross into a line of smaller ones unaligned.
    let dev_lbs = seen.iter().map(|s| s.2).max().unwrap_or(1);
    for (t, &(line, len_word, _)) in table.targets.iter().zip(&seen) {
        if !t.start.is_multiple_of(dev_lbs) || !t.len.is_multiple_of(dev_lbs) {
            return Err(err(line, TableErrorKind::Misaligned, len_word));
        }
    }
    Ok(table)
}

/// `<dev> <offset>`, checked to hold `need` sectors from `offset`.
fn parse_leg(
    w: &mut Words<'_>,
    resolve: &mut dyn FnMut(&str) -> Option<Lower>,
    need: u64,
) -> Result<Leg, TableError> {
    let name = w.word()?;
    let lower = resolve(name).ok_or_else(|| err(w.line, TableErrorKind::DeviceNotFound, name))?;
    let off_word = w.it.clone().next().unwrap_or("");
    let offset = w.num()?;
    let fits = offset
        .checked_add(need)
        .is_some_and(|end| end <= lower.dev.capacity());
    if !fits {
        return Err(err(w.line, TableErrorKind::DeviceTooSmall, name));
    }
    if !offset.is_multiple_of(lbs_sectors(&lower)) {
        return Err(err(w.line, TableErrorKind::Misaligned, off_word));
    }
    Ok(Leg { lower, offset })
}

fn parse_mirror(
    w: &mut Words<'_>,
    raw: &str,
    resolve: &mut dyn FnMut(&str) -> Option<Lower>,
    len: u64,
) -> Result<TargetKind, TableError> {
    let line = w.line;
    let log = w.word()?;
    if log != "core" {
        return Err(err(line, TableErrorKind::BadArgument, log));
    }
    let nargs_word = w.it.clone().next().unwrap_or("");
    let nargs = w.num()?;
    if !(1..=2).contains(&nargs) {
        return Err(err(line, TableErrorKind::BadArgument, nargs_word));
    }
    let region_word = w.it.clone().next().unwrap_or("");
    let region = w.num()?;
    if !region.is_power_of_two() {
        return Err(err(line, TableErrorKind::BadArgument, region_word));
    }
    let mut nosync = false;
    if nargs == 2 {
        match w.word()? {
            "sync" => {}
            "nosync" => nosync = true,
            other => return Err(err(line, TableErrorKind::BadArgument, other)),
        }
    }
    let n_word = w.it.clone().next().unwrap_or("");
    let n = w.num()?;
    if n == 0 || n > MAX_LEGS as u64 {
        return Err(err(line, TableErrorKind::TooManyLegs, n_word));
    }
    let mut legs = heapless::Vec::new();
    for _ in 0..n {
        let leg = parse_leg(w, resolve, len)?;
        if !region.is_multiple_of(lbs_sectors(&leg.lower)) {
            return Err(err(line, TableErrorKind::Misaligned, region_word));
        }
        let _ = legs.push(leg);
    }
    // Optional features: `1 handle_errors` (what this mirror always does).
    if let Some(nf) = w.it.next() {
        match (nf, w.it.next()) {
            ("1", Some("handle_errors")) => {}
            _ => return Err(err(line, TableErrorKind::ExtraArgs, nf)),
        }
    }
    w.end()?;
    let _ = raw;
    Ok(TargetKind::Mirror {
        region,
        nosync,
        legs,
    })
}
