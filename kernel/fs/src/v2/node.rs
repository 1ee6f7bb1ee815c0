//! Tree node format (`docs/tinyfs-format.md`, version 2, "Tree node"): a 32-byte header, item
//! headers `(key, value offset, value length)` sorted by key, free space, the values, a CRC32C.
//!
//! Values are kept in *canonical order*: item 0's value ends at [`DATA_END`], item `i + 1`'s
//! ends where item `i`'s begins. Validation enforces it, so every edit here can move whole
//! ranges without checking for overlaps, and no edit of a validated node can index out of
//! the block. Every function takes a block-sized slice (`BLOCK_SIZE` bytes).

use super::key::{KEY_SIZE, Key};
use crate::crc::crc32c;
use crate::format::BLOCK_SIZE;

/// `T F S 2`.
pub const MAGIC: u32 = 0x3253_4654;
/// Format version of every version-2 metadata block.
pub const VERSION: u16 = 2;
/// Header kind of a superblock.
pub const KIND_SUPER: u16 = 1;
/// Header kind of a tree node.
pub const KIND_NODE: u16 = 3;
/// Header bytes.
pub const HDR: usize = 32;
/// Bytes of one item header.
pub const ITEM_HDR: usize = KEY_SIZE + 4;
/// Where values end (the CRC follows).
pub const DATA_END: usize = BLOCK_SIZE - 4;
/// Bytes for item headers and values.
pub const CAPACITY: usize = DATA_END - HDR;
/// Largest leaf value: small enough that any leaf split leaves room for one more item.
pub const VALUE_MAX: usize = 960;
/// Bytes of an interior node's value (the child's block).
pub const CHILD_SIZE: usize = 8;
/// Levels a tree may have; a node's level is below this.
pub const MAX_HEIGHT: usize = 8;

const OFF_LEVEL: usize = 24;
const OFF_NITEMS: usize = 26;

fn rd16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn rd32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}
/// Little-endian u64 at `o`.
pub fn rd64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
fn wr16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn wr32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
/// Stores a little-endian u64 at `o`.
pub fn wr64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes the common header: magic, `kind`, version, `generation`, `at` (the block's own
/// number); bytes 24..32 are left to the caller.
pub fn put_header(b: &mut [u8], kind: u16, generation: u64, at: u64) {
    wr32(b, 0, MAGIC);
    wr16(b, 4, kind);
    wr16(b, 6, VERSION);
    wr64(b, 8, generation);
    wr64(b, 16, at);
}

/// Stores the CRC32C of bytes `0..DATA_END` in the trailer.
pub fn seal(b: &mut [u8]) {
    let c = crc32c(&b[..DATA_END]);
    wr32(b, DATA_END, c);
}

/// Checks magic, `kind`, version, CRC and that the block says it is block `at`; returns its
/// generation.
pub fn check_header(b: &[u8], kind: u16, at: u64) -> Result<u64, &'static str> {
    if b.len() != BLOCK_SIZE {
        return Err("short block");
    }
    if rd32(b, 0) != MAGIC {
        return Err("bad magic");
    }
    if rd16(b, 4) != kind {
        return Err("wrong block kind");
    }
    if rd16(b, 6) != VERSION {
        return Err("unsupported version");
    }
    if crc32c(&b[..DATA_END]) != rd32(b, DATA_END) {
        return Err("checksum mismatch");
    }
    if rd64(b, 16) != at {
        return Err("block written elsewhere (self mismatch)");
    }
    Ok(rd64(b, 8))
}

/// The generation in the header.
pub fn generation(b: &[u8]) -> u64 {
    rd64(b, 8)
}

/// Re-labels a node as written by `generation` to block `at` (a copy-on-write copy).
pub fn relabel(b: &mut [u8], generation: u64, at: u64) {
    wr64(b, 8, generation);
    wr64(b, 16, at);
}

/// An empty node of `level` (0 = leaf).
pub fn init(b: &mut [u8], level: u8, generation: u64, at: u64) {
    b.fill(0);
    put_header(b, KIND_NODE, generation, at);
    b[OFF_LEVEL] = level;
}

/// The node's level (0 = leaf).
pub fn level(b: &[u8]) -> u8 {
    b[OFF_LEVEL]
}

/// Items in the node.
pub fn nitems(b: &[u8]) -> usize {
    rd16(b, OFF_NITEMS) as usize
}

fn set_nitems(b: &mut [u8], n: usize) {
    wr16(b, OFF_NITEMS, n as u16);
}

fn ih(i: usize) -> usize {
    HDR + i * ITEM_HDR
}

/// Key of item `i`.
pub fn key(b: &[u8], i: usize) -> Key {
    Key::decode(&b[ih(i)..])
}

/// Sets item `i`'s key to `k` (which must keep the keys sorted).
pub(super) fn set_key(b: &mut [u8], i: usize, k: &Key) {
    k.encode(&mut b[ih(i)..ih(i) + KEY_SIZE]);
}

fn voff(b: &[u8], i: usize) -> usize {
    rd16(b, ih(i) + KEY_SIZE) as usize
}

fn vlen(b: &[u8], i: usize) -> usize {
    rd16(b, ih(i) + KEY_SIZE + 2) as usize
}

fn set_vloc(b: &mut [u8], i: usize, off: usize, len: usize) {
    wr16(b, ih(i) + KEY_SIZE, off as u16);
    wr16(b, ih(i) + KEY_SIZE + 2, len as u16);
}

/// Value of item `i`.
pub fn value(b: &[u8], i: usize) -> &[u8] {
    let o = voff(b, i);
    &b[o..o + vlen(b, i)]
}

/// Child block of interior item `i`.
pub fn child(b: &[u8], i: usize) -> u64 {
    rd64(b, voff(b, i))
}

/// Points interior item `i` at `block`.
pub fn set_child(b: &mut [u8], i: usize, block: u64) {
    let o = voff(b, i);
    wr64(b, o, block);
}

/// Lowers interior item 0's key to `k` (which must sort before item 1).
pub fn lower_first_key(b: &mut [u8], k: &Key) {
    set_key(b, 0, k);
}

/// Where the values of items `i..` begin (the lowest value byte when `i == nitems`).
fn low(b: &[u8]) -> usize {
    let n = nitems(b);
    if n == 0 { DATA_END } else { voff(b, n - 1) }
}

/// Where item `i`'s value ends.
fn vend(b: &[u8], i: usize) -> usize {
    if i == 0 { DATA_END } else { voff(b, i - 1) }
}

/// Bytes used by item headers and values.
pub fn used(b: &[u8]) -> usize {
    nitems(b) * ITEM_HDR + (DATA_END - low(b))
}

/// Contiguous free bytes.
pub fn free(b: &[u8]) -> usize {
    low(b) - ih(nitems(b))
}

/// Bytes an item with a value of `len` bytes takes.
pub const fn item_size(len: usize) -> usize {
    ITEM_HDR + len
}

/// `Ok(i)`: item `i` has key `k`; `Err(i)`: `k` would be inserted at `i`.
pub fn search(b: &[u8], k: &Key) -> Result<usize, usize> {
    let (mut lo, mut hi) = (0, nitems(b));
    while lo < hi {
        let mid = (lo + hi) / 2;
        // Compared field by field from the item header (one bounds check, the offset read
        // only when id and kind are equal): the hottest loop of every lookup.
        let o = ih(mid);
        let kb: &[u8; KEY_SIZE] = b[o..o + KEY_SIZE].try_into().unwrap_or(&[0xff; KEY_SIZE]);
        let id = u64::from_le_bytes([kb[0], kb[1], kb[2], kb[3], kb[4], kb[5], kb[6], kb[7]]);
        let ord = id
            .cmp(&k.id)
            .then_with(|| kb[8].cmp(&k.kind))
            .then_with(|| {
                u64::from_le_bytes([
                    kb[9], kb[10], kb[11], kb[12], kb[13], kb[14], kb[15], kb[16],
                ])
                .cmp(&k.offset)
            });
        match ord {
            core::cmp::Ordering::Less => lo = mid + 1,
            core::cmp::Ordering::Greater => hi = mid,
            core::cmp::Ordering::Equal => return Ok(mid),
        }
    }
    Err(lo)
}

/// The interior item whose child covers `k`: the last with a key `<= k`, or 0.
pub fn child_index(b: &[u8], k: &Key) -> usize {
    match search(b, k) {
        Ok(i) => i,
        Err(i) => i.saturating_sub(1),
    }
}

/// Moves the value offsets of the item headers in `hdrs` (whole headers) by `by` bytes, up
/// or down: one pass over the headers, no per-item bounds checks.
fn shift_offsets(hdrs: &mut [u8], by: usize, up: bool) {
    for h in hdrs.chunks_exact_mut(ITEM_HDR) {
        let o = u16::from_le_bytes([h[KEY_SIZE], h[KEY_SIZE + 1]]);
        let o = if up { o + by as u16 } else { o - by as u16 };
        h[KEY_SIZE..KEY_SIZE + 2].copy_from_slice(&o.to_le_bytes());
    }
}

/// Inserts `(k, v)` at position `i` (keys must stay sorted). Returns `false`, changing
/// nothing, when it does not fit.
pub fn insert_at(b: &mut [u8], i: usize, k: &Key, v: &[u8]) -> bool {
    let n = nitems(b);
    if free(b) < item_size(v.len()) {
        return false;
    }
    let lo = low(b);
    let end = vend(b, i);
    let len = v.len();
    // Values of items i.. move down by len; their headers move up by one slot.
    b.copy_within(lo..end, lo - len);
    b.copy_within(ih(i)..ih(n), ih(i + 1));
    shift_offsets(&mut b[ih(i + 1)..ih(n + 1)], len, false);
    b[end - len..end].copy_from_slice(v);
    set_key(b, i, k);
    set_vloc(b, i, end - len, len);
    set_nitems(b, n + 1);
    true
}

/// Removes item `i`.
pub fn remove_at(b: &mut [u8], i: usize) {
    let n = nitems(b);
    let lo = low(b);
    let (o, len) = (voff(b, i), vlen(b, i));
    b.copy_within(lo..o, lo + len);
    b.copy_within(ih(i + 1)..ih(n), ih(i));
    shift_offsets(&mut b[ih(i)..ih(n - 1)], len, true);
    set_nitems(b, n - 1);
    let end = ih(n - 1);
    b[end..ih(n)].fill(0);
    let new_low = low(b);
    b[lo..new_low].fill(0);
}

/// Replaces item `i`'s value by `v`. Returns `false`, changing nothing, when it does not fit.
pub fn set_value(b: &mut [u8], i: usize, v: &[u8]) -> bool {
    let old = vlen(b, i);
    if v.len() == old {
        // Same size (an inode, an extent remapped, a checksum item): in place, nothing moves.
        let o = voff(b, i);
        b[o..o + old].copy_from_slice(v);
        return true;
    }
    if v.len() > old && free(b) < v.len() - old {
        return false;
    }
    let n = nitems(b);
    let lo = low(b);
    let end = vend(b, i);
    let start = end - old;
    let new_start = end - v.len();
    // Values of items i+1.. (in lo..start) move by the size difference.
    let new_lo = lo + new_start - start;
    b.copy_within(lo..start, new_lo);
    b[new_start..end].copy_from_slice(v);
    set_vloc(b, i, new_start, v.len());
    for j in i + 1..n {
        let (oj, lj) = (voff(b, j), vlen(b, j));
        set_vloc(b, j, oj + new_start - start, lj);
    }
    if new_lo > lo {
        b[lo..new_lo].fill(0);
    }
    true
}

/// Moves items `at..` of `src` into the empty node `dst` (already initialized with the same
/// level).
pub fn split_into(src: &mut [u8], at: usize, dst: &mut [u8]) {
    let n = nitems(src);
    let lo = low(src);
    let end = vend(src, at);
    let shift = DATA_END - end;
    dst[lo + shift..DATA_END].copy_from_slice(&src[lo..end]);
    dst[HDR..HDR + (n - at) * ITEM_HDR].copy_from_slice(&src[ih(at)..ih(n)]);
    set_nitems(dst, n - at);
    for j in 0..n - at {
        let (o, l) = (voff(dst, j), vlen(dst, j));
        set_vloc(dst, j, o + shift, l);
    }
    src[ih(at)..ih(n)].fill(0);
    src[lo..end].fill(0);
    set_nitems(src, at);
}

/// Appends every item of `src` to `dst` (all of `src`'s keys sort after `dst`'s; the caller
/// has checked that `used(dst) + used(src) <= CAPACITY`).
pub fn append_from(dst: &mut [u8], src: &[u8]) {
    let (nd, ns) = (nitems(dst), nitems(src));
    let dlo = low(dst);
    let slo = low(src);
    let bytes = DATA_END - slo;
    let new_lo = dlo - bytes;
    dst[new_lo..dlo].copy_from_slice(&src[slo..DATA_END]);
    dst[ih(nd)..ih(nd + ns)].copy_from_slice(&src[HDR..ih(ns)]);
    let shift = DATA_END - dlo;
    for j in nd..nd + ns {
        let (o, l) = (voff(dst, j), vlen(dst, j));
        set_vloc(dst, j, o - shift, l);
    }
    set_nitems(dst, nd + ns);
}

/// The split point of a full leaf: the first item at which the items before hold at least
/// half the used bytes (between 1 and `nitems - 1` for a leaf that cannot take an item).
pub fn split_point(b: &[u8]) -> usize {
    let n = nitems(b);
    let half = used(b) / 2;
    let mut acc = 0;
    for i in 0..n {
        if acc >= half {
            return i.clamp(1, n - 1);
        }
        acc += item_size(vlen(b, i));
    }
    n.saturating_sub(1).max(1)
}

/// Validates a node read from block `at`: the header (see [`check_header`]) and the layout:
/// level, item count, canonical value placement, value sizes (leaf values up to
/// [`VALUE_MAX`], interior values exactly [`CHILD_SIZE`], at least one item in an interior
/// node), strictly ascending keys. Returns the generation.
pub fn check(b: &[u8], at: u64) -> Result<u64, &'static str> {
    let generation = check_header(b, KIND_NODE, at)?;
    let lvl = level(b) as usize;
    if lvl >= MAX_HEIGHT {
        return Err("node level too high");
    }
    if b[25] != 0 || rd32(b, 28) != 0 {
        return Err("reserved header bytes set");
    }
    let n = nitems(b);
    if ih(n) > DATA_END {
        return Err("item count too large");
    }
    if lvl > 0 && n == 0 {
        return Err("empty interior node");
    }
    // The item headers as fixed-size chunks (the block's item area has a constant length, so
    // no division), checked by the fast pass; only a node that fails it is walked again to
    // say which check failed.
    let hdrs = &b[HDR..DATA_END].as_chunks::<ITEM_HDR>().0[..n];
    let fits = if lvl > 0 {
        items_fit::<true>(hdrs)
    } else {
        items_fit::<false>(hdrs)
    };
    if fits {
        return Ok(generation);
    }
    Err(item_error(hdrs, lvl > 0).unwrap_or("value out of place"))
}

/// The fields of one item header: key `(id, kind, offset)`, value offset, value length. Every
/// field is one load from the fixed-size chunk.
#[inline(always)]
fn item_fields(h: &[u8; ITEM_HDR]) -> (u64, u8, u64, usize, usize) {
    let id = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    let kind = h[8];
    let off = u64::from_le_bytes([h[9], h[10], h[11], h[12], h[13], h[14], h[15], h[16]]);
    let o = u16::from_le_bytes([h[KEY_SIZE], h[KEY_SIZE + 1]]) as usize;
    let l = u16::from_le_bytes([h[KEY_SIZE + 2], h[KEY_SIZE + 3]]) as usize;
    (id, kind, off, o, l)
}

/// What [`items_fit`] keeps of the item before: its key's fields and where its value begins
/// (where the next value must end).
#[derive(Clone, Copy)]
struct Prev {
    id: u64,
    kind: u8,
    offset: u64,
    end: usize,
}

/// Whether a value of `l` bytes has a size a leaf (`INTERIOR` false) or interior item may have.
#[inline(always)]
fn size_ok<const INTERIOR: bool>(l: usize) -> bool {
    if INTERIOR {
        l == CHILD_SIZE
    } else {
        l <= VALUE_MAX
    }
}

/// Checks the item header `h` after the item `p` describes: value size, value placement (it
/// ends where the previous value begins), key above the previous key. `None` when a check
/// fails, else what the next item is checked against.
#[inline(always)]
fn next_item<const INTERIOR: bool>(p: Prev, h: &[u8; ITEM_HDR]) -> Option<Prev> {
    let (id, kind, offset, o, l) = item_fields(h);
    if !size_ok::<INTERIOR>(l) || o + l != p.end {
        return None;
    }
    // Field by field, each compare a branch (not `Key`'s `Ord`, which LLVM turns into flag
    // arithmetic over all three fields).
    let ascending = if id != p.id {
        id > p.id
    } else if kind != p.kind {
        kind > p.kind
    } else {
        offset > p.offset
    };
    ascending.then_some(Prev {
        id,
        kind,
        offset,
        end: o,
    })
}

/// Whether the item headers `hdrs` (all of a node's) pass [`check`]'s item checks: value sizes,
/// canonical value placement, strictly ascending keys. The fast pass every node read from the
/// device takes (about 17 instructions per item on x86_64, 26 before); [`item_error`] says
/// which check failed.
///
/// The previous item's fields stay in registers; the loop takes two items per step so that
/// they need no moves between registers. That no value reaches into the item headers needs
/// checking for the last item only: each value begins at or below where the previous one
/// begins.
#[inline(always)]
fn items_fit<const INTERIOR: bool>(hdrs: &[[u8; ITEM_HDR]]) -> bool {
    let first_value = HDR + hdrs.len() * ITEM_HDR;
    let Some((h0, rest)) = hdrs.split_first() else {
        return true;
    };
    // Item 0: its value size and placement (no key before it).
    let (id, kind, offset, o, l) = item_fields(h0);
    if !size_ok::<INTERIOR>(l) || o + l != DATA_END {
        return false;
    }
    let mut p = Prev {
        id,
        kind,
        offset,
        end: o,
    };
    let (pairs, last) = rest.as_chunks::<2>();
    for [a, b] in pairs {
        let Some(q) = next_item::<INTERIOR>(p, a).and_then(|q| next_item::<INTERIOR>(q, b)) else {
            return false;
        };
        p = q;
    }
    for h in last {
        let Some(q) = next_item::<INTERIOR>(p, h) else {
            return false;
        };
        p = q;
    }
    p.end >= first_value
}

/// The first item check of [`check`] that `hdrs` fails, if any: items in order; for one item,
/// its value size, then its placement, then its key against the previous key. The slow pass,
/// run only for a node that [`items_fit`] refused, which refuses exactly the nodes this
/// finds a failure in (the node tests check that the two agree).
#[cold]
#[inline(never)]
fn item_error(hdrs: &[[u8; ITEM_HDR]], interior: bool) -> Option<&'static str> {
    let first_value = HDR + hdrs.len() * ITEM_HDR;
    let mut end = DATA_END;
    let mut prev: Option<Key> = None;
    for h in hdrs {
        let (_, _, _, o, l) = item_fields(h);
        if interior && l != CHILD_SIZE {
            return Some("interior value is not a block number");
        }
        if l > VALUE_MAX {
            return Some("value too long");
        }
        if o + l != end || o < first_value {
            return Some("value out of place");
        }
        end = o;
        let k = Key::decode(h);
        if prev.is_some_and(|p| p >= k) {
            return Some("keys out of order");
        }
        prev = Some(k);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn node(level: u8) -> Vec<u8> {
        let mut b = std::vec![0u8; BLOCK_SIZE];
        init(&mut b, level, 1, 7);
        b
    }

    fn items(b: &[u8]) -> Vec<(Key, Vec<u8>)> {
        (0..nitems(b))
            .map(|i| (key(b, i), value(b, i).to_vec()))
            .collect()
    }

    fn valid(b: &mut [u8]) {
        seal(b);
        check(b, 7).unwrap();
    }

    #[test]
    fn edits_keep_the_canonical_layout() {
        let mut b = node(0);
        let mut model: Vec<(Key, Vec<u8>)> = Vec::new();
        let mut x = 12345u64;
        for step in 0..4000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = Key::new(x % 64, 1, 0);
            let len = (x >> 20) as usize % 200;
            let v: Vec<u8> = (0..len).map(|j| (j as u64 + step) as u8).collect();
            match search(&b, &k) {
                Ok(i) if x.is_multiple_of(3) => {
                    remove_at(&mut b, i);
                    model.remove(i);
                }
                Ok(i) => {
                    if set_value(&mut b, i, &v) {
                        model[i].1 = v;
                    } else {
                        assert!(free(&b) < v.len() - model[i].1.len());
                    }
                }
                Err(i) => {
                    if insert_at(&mut b, i, &k, &v) {
                        model.insert(i, (k, v));
                    } else {
                        assert!(free(&b) < item_size(v.len()));
                    }
                }
            }
            valid(&mut b);
            assert_eq!(items(&b), model);
            assert_eq!(used(&b) + free(&b), CAPACITY);
        }
    }

    #[test]
    fn split_and_append_are_inverse() {
        let mut b = node(0);
        for i in 0..30u64 {
            let v = std::vec![i as u8; (i as usize * 7) % 100];
            assert!(insert_at(&mut b, i as usize, &Key::new(i, 0, 0), &v));
        }
        let all = items(&b);
        let at = split_point(&b);
        assert!(at > 0 && at < 30);
        let mut r = node(0);
        split_into(&mut b, at, &mut r);
        valid(&mut b);
        valid(&mut r);
        assert_eq!(items(&b), all[..at]);
        assert_eq!(items(&r), all[at..]);
        append_from(&mut b, &r);
        valid(&mut b);
        assert_eq!(items(&b), all);
    }

    #[test]
    fn validation_catches_damage() {
        let mut b = node(1);
        assert_eq!(
            check(
                &{
                    let mut c = b.clone();
                    seal(&mut c);
                    c
                },
                7
            ),
            Err("empty interior node")
        );
        assert!(insert_at(
            &mut b,
            0,
            &Key::new(1, 0, 0),
            &9u64.to_le_bytes()
        ));
        assert!(insert_at(
            &mut b,
            1,
            &Key::new(2, 0, 0),
            &10u64.to_le_bytes()
        ));
        valid(&mut b);
        assert_eq!(check(&b, 8), Err("block written elsewhere (self mismatch)"));
        let mut c = b.clone();
        c[100] ^= 1;
        assert_eq!(check(&c, 7), Err("checksum mismatch"));
        let mut c = b.clone();
        set_key(&mut c, 1, &Key::new(0, 0, 0));
        seal(&mut c);
        assert_eq!(check(&c, 7), Err("keys out of order"));
        let mut c = b.clone();
        set_vloc(&mut c, 0, DATA_END - 9, 9);
        seal(&mut c);
        assert_eq!(check(&c, 7), Err("interior value is not a block number"));
        let mut c = b.clone();
        set_vloc(&mut c, 1, 40, 8);
        seal(&mut c);
        assert_eq!(check(&c, 7), Err("value out of place"));
        let mut c = b.clone();
        set_nitems(&mut c, 400);
        seal(&mut c);
        assert_eq!(check(&c, 7), Err("item count too large"));
    }

    /// A sealed copy of `b` after `edit`, and what `check` says of it.
    fn damaged(b: &[u8], edit: impl FnOnce(&mut [u8])) -> Result<u64, &'static str> {
        let mut c = b.to_vec();
        edit(&mut c);
        seal(&mut c);
        check(&c, 7)
    }

    /// Sets item `i`'s key bytes without going through `Key` (any value, in order or not).
    fn put_key(b: &mut [u8], i: usize, id: u64, kind: u8, offset: u64) {
        set_key(b, i, &Key::new(id, kind, offset));
    }

    #[test]
    fn every_item_check_fires() {
        // A leaf of five items with keys sharing id and kind (a directory's entries) and one
        // of an interior node.
        let mut leaf = node(0);
        for i in 0..5u64 {
            assert!(insert_at(
                &mut leaf,
                i as usize,
                &Key::new(9, 2, 100 + i),
                &[i as u8; 30]
            ));
        }
        valid(&mut leaf);
        let mut inner = node(1);
        for i in 0..5u64 {
            assert!(insert_at(
                &mut inner,
                i as usize,
                &Key::new(i + 1, 0, 0),
                &(50 + i).to_le_bytes()
            ));
        }
        valid(&mut inner);

        let order = Err("keys out of order");
        // Equal keys, at the first pair and at the last.
        assert_eq!(damaged(&leaf, |c| put_key(c, 1, 9, 2, 100)), order);
        assert_eq!(damaged(&leaf, |c| put_key(c, 4, 9, 2, 103)), order);
        // Descending at the last item: by offset, by kind, by id.
        assert_eq!(damaged(&leaf, |c| put_key(c, 4, 9, 2, 102)), order);
        assert_eq!(damaged(&leaf, |c| put_key(c, 4, 9, 1, u64::MAX)), order);
        assert_eq!(
            damaged(&leaf, |c| put_key(c, 4, 8, u8::MAX, u64::MAX)),
            order
        );
        // Descending in the middle (item 2 of 5: the first of a pair), and in an interior node.
        assert_eq!(damaged(&leaf, |c| put_key(c, 2, 9, 2, 100)), order);
        assert_eq!(damaged(&leaf, |c| put_key(c, 3, 9, 2, 99)), order);
        assert_eq!(damaged(&inner, |c| put_key(c, 4, 4, 0, 0)), order);
        assert_eq!(damaged(&inner, |c| put_key(c, 2, 2, 0, 0)), order);
        // Ascending by a higher field with lower fields below: still in order.
        assert!(damaged(&leaf, |c| put_key(c, 4, 9, 3, 0)).is_ok());
        assert!(damaged(&leaf, |c| put_key(c, 4, 10, 0, 0)).is_ok());
        assert!(damaged(&inner, |c| put_key(c, 0, 0, 0, 0)).is_ok());

        let place = Err("value out of place");
        // Overlapping the previous value, leaving a gap, at the first item and the last.
        assert_eq!(
            damaged(&leaf, |c| set_vloc(c, 4, voff(&leaf, 4) + 1, 30)),
            place
        );
        assert_eq!(
            damaged(&leaf, |c| set_vloc(c, 4, voff(&leaf, 4) - 1, 30)),
            place
        );
        assert_eq!(damaged(&leaf, |c| set_vloc(c, 0, DATA_END - 31, 30)), place);
        assert_eq!(
            damaged(&leaf, |c| set_vloc(c, 2, voff(&leaf, 2), 31)),
            place
        );
        assert_eq!(
            damaged(&inner, |c| set_vloc(c, 3, voff(&inner, 3) - 8, 8)),
            place
        );
        // In canonical order but reaching down into the item headers.
        let mut big = node(0);
        for i in 0..4u64 {
            assert!(insert_at(
                &mut big,
                i as usize,
                &Key::new(i, 0, 0),
                &[1; VALUE_MAX]
            ));
        }
        valid(&mut big);
        assert_eq!(
            damaged(&big, |c| {
                put_key(c, 4, 5, 0, 0);
                let o = voff(c, 3) - 200;
                set_vloc(c, 4, o, 200);
                set_nitems(c, 5);
            }),
            place
        );

        // Value sizes.
        assert_eq!(
            damaged(&inner, |c| set_vloc(c, 4, voff(&inner, 4) - 1, 9)),
            Err("interior value is not a block number")
        );
        assert_eq!(
            damaged(&inner, |c| set_vloc(c, 0, DATA_END, 0)),
            Err("interior value is not a block number")
        );
        assert_eq!(
            damaged(&big, |c| set_vloc(c, 3, voff(&big, 3) - 1, VALUE_MAX + 1)),
            Err("value too long")
        );

        // The header.
        for at in [25, 28, 29, 30, 31] {
            assert_eq!(
                damaged(&leaf, |c| c[at] = 1),
                Err("reserved header bytes set"),
                "{at}"
            );
        }
        assert_eq!(
            damaged(&leaf, |c| c[OFF_LEVEL] = MAX_HEIGHT as u8),
            Err("node level too high")
        );
        assert!(damaged(&inner, |c| c[OFF_LEVEL] = MAX_HEIGHT as u8 - 1).is_ok());
        assert_eq!(
            damaged(&leaf, |c| c[OFF_LEVEL] = 1),
            Err("interior value is not a block number")
        );
        assert_eq!(
            damaged(&inner, |c| c[OFF_LEVEL] = 0),
            Ok(1),
            "an interior node's items are a valid leaf's"
        );
        assert_eq!(
            damaged(&leaf, |c| set_nitems(c, 194)),
            Err("item count too large")
        );
        assert_eq!(
            damaged(&leaf, |c| set_nitems(c, 6)),
            place,
            "an item of zeros after the last"
        );
    }

    /// The checks as written in the format description, item by item with `Key`'s order.
    fn reference(b: &[u8]) -> bool {
        let n = nitems(b);
        let first_value = ih(n);
        let mut end = DATA_END;
        (0..n).all(|i| {
            let (o, l) = (voff(b, i), vlen(b, i));
            let size = if level(b) > 0 {
                l == CHILD_SIZE
            } else {
                l <= VALUE_MAX
            };
            let placed = o + l == end && o >= first_value;
            end = o;
            size && placed && (i == 0 || key(b, i - 1) < key(b, i))
        })
    }

    #[test]
    fn fast_and_slow_item_checks_agree() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let (mut ok, mut bad) = (0, 0);
        for round in 0..20_000 {
            let level = (round % 3 == 0) as u8;
            let mut b = node(level);
            // Keys from a small domain (so that equal ids and kinds are common), each item
            // mostly in order and in place, now and then not.
            let n = 1 + rnd(12) as usize;
            let mut end = DATA_END;
            let mut k = Key::new(rnd(3), rnd(3) as u8, rnd(3));
            for i in 0..n {
                if rnd(8) != 0 {
                    k = match rnd(3) {
                        0 => Key::new(k.id + 1, rnd(3) as u8, rnd(3)),
                        1 => Key::new(k.id, k.kind + 1, rnd(3)),
                        _ => Key::new(k.id, k.kind, k.offset + 1),
                    };
                } else {
                    k = Key::new(k.id.saturating_sub(rnd(2)), rnd(3) as u8, rnd(3));
                }
                let l = match (level, rnd(16)) {
                    (1, 0) => rnd(16) as usize,
                    (1, _) => CHILD_SIZE,
                    (_, 0) => VALUE_MAX + rnd(3) as usize,
                    _ => rnd(VALUE_MAX as u64 / 4) as usize,
                };
                let o = match rnd(16) {
                    0 => end.saturating_sub(l + rnd(3) as usize).wrapping_add(1),
                    _ => end.saturating_sub(l),
                };
                set_key(&mut b, i, &k);
                set_vloc(&mut b, i, o, l);
                end = o;
            }
            set_nitems(&mut b, n);
            let hdrs = &b[HDR..DATA_END].as_chunks::<ITEM_HDR>().0[..n];
            let fast = if level > 0 {
                items_fit::<true>(hdrs)
            } else {
                items_fit::<false>(hdrs)
            };
            let slow = item_error(hdrs, level > 0);
            assert_eq!(fast, slow.is_none(), "round {round}: {slow:?}");
            assert_eq!(fast, reference(&b), "round {round}");
            seal(&mut b);
            assert_eq!(check(&b, 7).is_ok(), fast, "round {round}");
            if fast { ok += 1 } else { bad += 1 }
        }
        // Both outcomes are common, so each check has been met either way.
        assert!(ok > 2_000 && bad > 2_000, "{ok} valid, {bad} refused");
    }
}
