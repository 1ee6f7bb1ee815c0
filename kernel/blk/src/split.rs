//! Splitting a bio into a front part and the rest, chained so the original completes last.

use crate::bio::Bio;
use crate::bioset::BioSet;
use crate::error::BlkError;
use crate::slab::{NO_CPU, Wait};

/// Splits off the first `bytes` of `bio` into a new bio from `set`, which it returns.
///
/// The returned front bio is chained to `bio` (its parent), and `bio` is advanced past the
/// front part. `bio` then completes once, after the front part and itself, with the first
/// error of either. `bytes` must be non-zero and less than `bio.size()`.
pub fn bio_split(
    bio: &mut Bio,
    bytes: u32,
    set: &'static BioSet<()>,
    wait: Wait,
) -> Result<Bio, BlkError> {
    bio_split_on(NO_CPU, bio, bytes, set, wait)
}

/// As [`bio_split`], the front bio (and its vector array) allocated on CPU `cpu`'s magazines
/// ([`BioSet::alloc_on`]).
pub fn bio_split_on(
    cpu: u32,
    bio: &mut Bio,
    bytes: u32,
    set: &'static BioSet<()>,
    wait: Wait,
) -> Result<Bio, BlkError> {
    if bytes == 0 || bytes >= bio.size() {
        return Err(BlkError::InvalidArgument);
    }
    let op = bio.op();
    let nvecs = if op.has_data() {
        let mut n = 0usize;
        let mut left = bytes;
        for v in bio.segments() {
            if left == 0 {
                break;
            }
            left = left.saturating_sub(v.len());
            n += 1;
        }
        n
    } else {
        0
    };
    let mut front = set.alloc_on(cpu, (), op, nvecs, wait)?;
    front.copy_meta_from(bio);
    if op.has_data() {
        let mut left = bytes;
        for v in bio.segments() {
            if left == 0 {
                break;
            }
            let n = v.len().min(left);
            left -= n;
            front.add_vec(v.part(0, n).unwrap_or(v))?;
        }
    } else {
        front.set_size(bytes)?;
    }
    front.chain_to(bio);
    bio.advance(bytes);
    Ok(front)
}

/// Makes a clone of `src`'s remaining data (same op, flags, device, sector and segments),
/// chained to `src`. Used to send one bio to several devices (flush to every stripe).
pub fn bio_clone_chained(src: &Bio, set: &'static BioSet<()>, wait: Wait) -> Result<Bio, BlkError> {
    let n = src.segments().count();
    let mut c = set.alloc((), src.op(), n, wait)?;
    c.copy_meta_from(src);
    if src.op().has_data() {
        for v in src.segments() {
            c.add_vec(v)?;
        }
    } else {
        c.set_size(src.size())?;
    }
    c.chain_to(src);
    Ok(c)
}
