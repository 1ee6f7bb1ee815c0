//! The name cache: directory entries recently found or made, `(directory, name)` to the
//! entry's key, inode and kind, so a lookup of a name in use costs no tree search, whatever
//! the directory's size.
//!
//! Entries are keyed by name hash, so the names a program works with land in leaves all over
//! a large directory's part of the tree: with a node cache of fixed size, a lookup in a
//! directory of 100,000 entries would read a leaf each time. A path walk (`stat`, `open`,
//! `unlink`) looks each component up here first.
//!
//! It only ever holds entries the tree has (a positive cache): the volume drops a name before
//! it changes the tree's entry for it (`remove`, `rename`) and adds one after the tree took
//! it (`create`, a lookup that found it), so a failure half-way through an operation can
//! leave a name out, never a stale one in. A name not here is looked up in the tree; a name
//! not in the tree is never answered from here (a `create` still searches its hash's slots).
//!
//! Memory: [`NAME_FRAMES`] blocks the caller lends, as [`SLOTS`] records of [`REC`] bytes in
//! sets of [`WAYS`] by `(directory, name hash)`; a full set replaces its oldest record
//! (first in, first out). Names longer than [`NAME_CACHED`] bytes are not cached.
//!
//! Record layout (little-endian): directory `0..8`, inode `8..16`, the entry's key offset
//! `16..24` (shifted right by 16 bits: the name hash), kind code `24`, name length `25` (0: an
//! empty record), name `26..26 + len`.

use crate::format::BLOCK_SIZE;

/// Blocks of memory the name cache takes.
pub const NAME_FRAMES: usize = 32;
/// Bytes of a record.
pub const REC: usize = 64;
/// Records per set.
pub const WAYS: usize = 4;
/// Records in all.
pub const SLOTS: usize = NAME_FRAMES * BLOCK_SIZE / REC;
/// Sets.
const SETS: usize = SLOTS / WAYS;
/// Longest name cached, in bytes.
pub const NAME_CACHED: usize = REC - NAME_AT;
const NAME_AT: usize = 26;

const _: () = assert!(SETS.is_power_of_two() && SETS <= u16::MAX as usize);

/// An entry the cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cached {
    /// The entry's key offset in its directory.
    pub offset: u64,
    /// The inode it names.
    pub ino: u64,
    /// Its kind's code (as stored in the entry).
    pub kind: u8,
}

/// Lookups answered and not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the tree.
    pub misses: u64,
}

/// The cache over [`NAME_FRAMES`] borrowed blocks.
pub struct NameCache<'b> {
    mem: &'b mut [u8],
    /// Per set, the way its next new record replaces.
    next: [u8; SETS],
    stats: NameStats,
}

impl core::fmt::Debug for NameCache<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NameCache")
            .field("slots", &SLOTS)
            .field("stats", &self.stats)
            .finish()
    }
}

fn rd64(r: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&r[o..o + 8]);
    u64::from_le_bytes(a)
}

/// The first record of the set of `(dir, hash)`.
fn set_of(dir: u64, hash: u64) -> usize {
    let mixed = (hash ^ dir.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)) as usize;
    mixed & (SETS - 1)
}

impl<'b> NameCache<'b> {
    /// An empty cache over the first [`NAME_FRAMES`] blocks of `mem` (which must hold them).
    pub fn new(mem: &'b mut [u8]) -> Self {
        let mem = &mut mem[..SLOTS * REC];
        mem.fill(0);
        NameCache {
            mem,
            next: [0; SETS],
            stats: NameStats::default(),
        }
    }

    /// Lookups so far.
    pub fn stats(&self) -> NameStats {
        self.stats
    }

    /// The record index of `name` in `dir` (with `hash`, its name hash), if cached.
    fn position(&self, dir: u64, hash: u64, name: &[u8]) -> Option<usize> {
        if name.is_empty() || name.len() > NAME_CACHED {
            return None;
        }
        let first = set_of(dir, hash) * WAYS;
        (first..first + WAYS).find(|&i| {
            let r = &self.mem[i * REC..(i + 1) * REC];
            r[25] as usize == name.len()
                && rd64(r, 16) >> 16 == hash
                && rd64(r, 0) == dir
                && &r[NAME_AT..NAME_AT + name.len()] == name
        })
    }

    /// The entry of `name` in `dir` (`hash`: its name hash), if cached.
    pub fn get(&mut self, dir: u64, hash: u64, name: &[u8]) -> Option<Cached> {
        let Some(i) = self.position(dir, hash, name) else {
            self.stats.misses += 1;
            return None;
        };
        self.stats.hits += 1;
        let r = &self.mem[i * REC..(i + 1) * REC];
        Some(Cached {
            offset: rd64(r, 16),
            ino: rd64(r, 8),
            kind: r[24],
        })
    }

    /// Notes that `dir` has `name` (`hash`: its name hash) as `e`. Only for an entry the
    /// tree holds now.
    pub fn put(&mut self, dir: u64, hash: u64, name: &[u8], e: Cached) {
        if name.is_empty() || name.len() > NAME_CACHED || e.offset >> 16 != hash {
            return;
        }
        let set = set_of(dir, hash);
        let i = match self.position(dir, hash, name) {
            Some(i) => i,
            None => {
                let first = set * WAYS;
                match (first..first + WAYS).find(|&i| self.mem[i * REC + 25] == 0) {
                    Some(i) => i,
                    None => {
                        let way = self.next[set] as usize % WAYS;
                        self.next[set] = ((way + 1) % WAYS) as u8;
                        first + way
                    }
                }
            }
        };
        let r = &mut self.mem[i * REC..(i + 1) * REC];
        r[0..8].copy_from_slice(&dir.to_le_bytes());
        r[8..16].copy_from_slice(&e.ino.to_le_bytes());
        r[16..24].copy_from_slice(&e.offset.to_le_bytes());
        r[24] = e.kind;
        r[25] = name.len() as u8;
        r[NAME_AT..NAME_AT + name.len()].copy_from_slice(name);
    }

    /// Drops `name` of `dir` (`hash`: its name hash), before the tree's entry changes.
    pub fn forget(&mut self, dir: u64, hash: u64, name: &[u8]) {
        if let Some(i) = self.position(dir, hash, name) {
            self.mem[i * REC + 25] = 0;
        }
    }

    /// Drops every record.
    pub fn clear(&mut self) {
        for r in self.mem.chunks_exact_mut(REC) {
            r[25] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn e(hash: u64, n: u64, ino: u64) -> Cached {
        Cached {
            offset: hash << 16 | n,
            ino,
            kind: 1,
        }
    }

    #[test]
    fn holds_what_was_put_until_forgotten() {
        let mut m = vec![0xa5u8; NAME_FRAMES * BLOCK_SIZE];
        let mut c = NameCache::new(&mut m);
        assert_eq!(
            c.get(16, 7, b"a"),
            None,
            "a new cache over old memory is empty"
        );
        c.put(16, 7, b"a", e(7, 0, 100));
        c.put(16, 7, b"b", e(7, 1, 101));
        c.put(17, 7, b"a", e(7, 0, 102));
        assert_eq!(c.get(16, 7, b"a"), Some(e(7, 0, 100)));
        assert_eq!(c.get(16, 7, b"b"), Some(e(7, 1, 101)));
        assert_eq!(c.get(17, 7, b"a"), Some(e(7, 0, 102)), "directories apart");
        assert_eq!(c.get(16, 7, b"ab"), None);
        assert_eq!(c.get(16, 8, b"a"), None, "another hash");
        c.put(16, 7, b"a", e(7, 3, 200));
        assert_eq!(
            c.get(16, 7, b"a"),
            Some(e(7, 3, 200)),
            "replaced, not doubled"
        );
        c.forget(16, 7, b"a");
        assert_eq!(c.get(16, 7, b"a"), None);
        assert_eq!(c.get(16, 7, b"b"), Some(e(7, 1, 101)));
        c.clear();
        assert_eq!(c.get(16, 7, b"b"), None);
        assert_eq!(c.stats().hits, 5);
    }

    #[test]
    fn a_full_set_drops_its_oldest_and_long_names_are_not_kept() {
        let mut m = vec![0u8; NAME_FRAMES * BLOCK_SIZE];
        let mut c = NameCache::new(&mut m);
        // Names of one hash in one directory share a set.
        let names: [&[u8]; WAYS + 1] = [b"n0", b"n1", b"n2", b"n3", b"n4"];
        for (i, n) in names.iter().enumerate() {
            c.put(16, 9, n, e(9, i as u64, 50 + i as u64));
        }
        assert_eq!(c.get(16, 9, b"n0"), None, "the oldest went");
        for (i, n) in names.iter().enumerate().skip(1) {
            assert_eq!(c.get(16, 9, n), Some(e(9, i as u64, 50 + i as u64)));
        }
        let long = [b'x'; NAME_CACHED + 1];
        c.put(16, 9, &long, e(9, 7, 60));
        assert_eq!(c.get(16, 9, &long), None);
        let most = [b'y'; NAME_CACHED];
        c.put(16, 9, &most, e(9, 8, 61));
        assert_eq!(c.get(16, 9, &most), Some(e(9, 8, 61)));
        // An entry whose key does not carry the name's hash is refused.
        c.put(16, 10, b"z", e(11, 0, 62));
        assert_eq!(c.get(16, 10, b"z"), None);
    }
}
