//! Bios, bio vectors, the bio iterator, bio lists and `bio_endio`.

use core::fmt;

use hal::PhysAddr;

use crate::device::BlockDevice;
use crate::error::{BlkError, BlkStatus, status_code, status_from_code};
use crate::slab::{ChainRef, Node, VecBuf, WaitRef};

/// Bytes per sector (the unit of `Bio::sector`, whatever the device's block size).
pub const SECTOR_SIZE: u32 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Segments stored inside the bio itself.
pub const INLINE_VECS: usize = 4;
/// The most segments a bio can have.
pub const MAX_VECS: usize = 256;

/// One segment of a bio: `len` bytes of memory at physical address `addr`.
///
/// A segment is a promise that a device may read and write that memory, so safe code cannot
/// name arbitrary memory with one: the fields are private and [`BioVec::new`] is `unsafe`. Safe
/// code builds segments from memory it owns for ever, a [`crate::mem::DmaRegion`]:
///
/// ```
/// use blk::BioVec;
/// use blk::mem::DmaRegion;
///
/// let mem: &'static mut [u8] = Box::leak(vec![0u8; 8192].into_boxed_slice());
/// let mut region = DmaRegion::from_static(mem);
/// let seg: BioVec = region.segment(4096, 4096).expect("inside the region");
/// assert_eq!(seg.addr(), region.phys().add(4096));
/// assert_eq!(seg.len(), 4096);
/// assert!(region.segment(4096, 4097).is_none(), "past the end");
/// region.as_mut_slice()[0] = 1; // CPU access goes through the region
/// ```
///
/// Neither a struct literal nor [`BioVec::new`] without `unsafe` compiles:
///
/// ```compile_fail,E0451
/// let v = blk::BioVec { addr: hal::PhysAddr(0x1000), len: 4096 };
/// ```
///
/// ```compile_fail,E0133
/// let v = blk::BioVec::new(hal::PhysAddr(0x1000), 4096);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct BioVec {
    addr: PhysAddr,
    len: u32,
}

impl BioVec {
    /// The empty segment.
    pub const ZERO: BioVec = BioVec {
        addr: PhysAddr(0),
        len: 0,
    };

    /// A segment over `len` bytes at physical address `addr`.
    ///
    /// # Safety
    /// The segment contract, which every bio carrying the segment relies on until it completes:
    /// 1. `addr..addr + len` is memory valid for device reads and writes of `len` bytes (RAM a
    ///    device can reach at that address, below the device's DMA limit unless the queue
    ///    bounces);
    /// 2. the CPU reaches it at `addr` through `hal`'s translation (`hal::mem`), which the
    ///    RAM disk and bounce buffers use to copy it;
    /// 3. it is owned by the I/O until the bio (and every bio split or cloned from it)
    ///    completes: it is not freed or reused meanwhile;
    /// 4. nothing else accesses it meanwhile (for a write, the CPU may read it).
    #[allow(unsafe_code)]
    pub const unsafe fn new(addr: PhysAddr, len: u32) -> Self {
        BioVec { addr, len }
    }

    /// Physical address of the first byte.
    #[inline]
    pub const fn addr(&self) -> PhysAddr {
        self.addr
    }

    /// Length in bytes.
    #[inline]
    pub const fn len(&self) -> u32 {
        self.len
    }

    /// Whether the segment is empty.
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part `off..off + len` of this segment (`None` if it does not fit). A part of a
    /// segment is under the segment's contract, so this is safe.
    #[inline]
    pub const fn part(&self, off: u32, len: u32) -> Option<BioVec> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Some(BioVec {
                addr: self.addr.add(off as u64),
                len,
            }),
            _ => None,
        }
    }

    /// One past the last byte.
    pub const fn end(&self) -> u64 {
        self.addr.0 + self.len as u64
    }
}

impl fmt::Debug for BioVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}+{}]", self.addr.0, self.len)
    }
}

/// What a bio does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read into the segments.
    Read,
    /// Write the segments.
    Write,
    /// Flush the device's volatile cache (no data, no sectors).
    Flush,
    /// Discard (trim) a sector range (no data).
    Discard,
    /// Write zeroes to a sector range (no data).
    WriteZeroes,
}

impl Op {
    /// Whether the op carries data segments.
    pub const fn has_data(self) -> bool {
        matches!(self, Op::Read | Op::Write)
    }

    /// Whether the op modifies the medium.
    pub const fn is_write(self) -> bool {
        matches!(self, Op::Write | Op::Discard | Op::WriteZeroes | Op::Flush)
    }
}

bitflags::bitflags! {
    /// Bio flags.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct BioFlags: u16 {
        /// Force unit access: the data is on stable media when the bio completes.
        const FUA = 1 << 0;
        /// Flush the volatile cache before this write.
        const PREFLUSH = 1 << 1;
        /// Someone waits synchronously for it.
        const SYNC = 1 << 2;
        /// Filesystem metadata.
        const META = 1 << 3;
        /// Never merge this bio with others.
        const NOMERGE = 1 << 4;
    }
}

/// Where a bio is in its segments: start sector of what is left, bytes left, current vector
/// index and bytes done in that vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BioIter {
    /// Sector of the next byte to transfer.
    pub sector: u64,
    /// Bytes left.
    pub size: u32,
    /// Index of the current vector.
    pub idx: u16,
    /// Bytes of the current vector already done.
    pub done: u32,
}

impl BioIter {
    /// Moves forward by `bytes` over `vecs` (all of them when the op has no data).
    pub fn advance(&mut self, vecs: &[BioVec], bytes: u32) {
        let bytes = bytes.min(self.size);
        self.size -= bytes;
        self.sector += (bytes >> SECTOR_SHIFT) as u64;
        let mut left = bytes;
        while left > 0 {
            let Some(v) = vecs.get(self.idx as usize) else {
                break;
            };
            let in_vec = v.len - self.done;
            if left < in_vec {
                self.done += left;
                left = 0;
            } else {
                left -= in_vec;
                self.idx += 1;
                self.done = 0;
            }
        }
        // Skip empty vectors so `idx` names the vector of the next byte.
        while let Some(v) = vecs.get(self.idx as usize) {
            if v.len == self.done && self.size > 0 {
                self.idx += 1;
                self.done = 0;
            } else {
                break;
            }
        }
    }
}

/// The segments still to transfer, cut to the iterator's position and size.
#[derive(Clone)]
pub struct Segments<'a> {
    vecs: &'a [BioVec],
    idx: usize,
    done: u32,
    left: u32,
}

impl<'a> Segments<'a> {
    /// Segments of `vecs` from `iter`.
    pub fn new(vecs: &'a [BioVec], iter: BioIter) -> Self {
        Segments {
            vecs,
            idx: iter.idx as usize,
            done: iter.done,
            left: iter.size,
        }
    }
}

impl Iterator for Segments<'_> {
    type Item = BioVec;
    fn next(&mut self) -> Option<BioVec> {
        while self.left > 0 {
            let v = self.vecs.get(self.idx)?;
            let len = (v.len - self.done).min(self.left);
            let addr = v.addr.add(self.done as u64);
            self.idx += 1;
            self.done = 0;
            if len == 0 {
                continue;
            }
            self.left -= len;
            return Some(BioVec { addr, len });
        }
        None
    }
}

/// What happens when a bio completes.
#[derive(Clone, Copy, Default)]
pub enum EndIo {
    /// Nothing: the bio is freed (or handed to its waiter).
    #[default]
    None,
    /// Call this with the bio (which it then owns). Runs in the completing context, often an
    /// interrupt handler: it must not wait.
    Callback(fn(Bio)),
    /// An object sees the end first: a stacking device that sends a bio it does not own down
    /// as it is (a mirror's write to its first leg) sets this, keeping the owner's `end_io`
    /// and private word ([`Bio::set_end_hook`]). The hook gets the bio with its chain parent
    /// still linked and no parent credited; it puts the owner's completion back
    /// ([`Bio::restore_end_io`]) and ends the bio again with [`bio_endio`] when it is done.
    Hook(&'static dyn EndHook),
}

/// A completion hook on an object ([`EndIo::Hook`]). Same context rules as a callback.
pub trait EndHook: Sync {
    /// `bio` completed; the hook owns it.
    fn bio_end(&'static self, bio: Bio);
}

pub(crate) enum Vecs {
    Inline([BioVec; INLINE_VECS]),
    Pool(VecBuf<BioVec>),
}

impl Vecs {
    fn slice(&self) -> &[BioVec] {
        match self {
            Vecs::Inline(v) => v,
            Vecs::Pool(v) => v,
        }
    }
    fn slice_mut(&mut self) -> &mut [BioVec] {
        match self {
            Vecs::Inline(v) => v,
            Vecs::Pool(v) => v,
        }
    }
}

/// The body of a bio (reached through [`Bio`]).
pub struct BioInner {
    op: Op,
    flags: BioFlags,
    dev: Option<&'static dyn BlockDevice>,
    iter: BioIter,
    vecs: Vecs,
    vcnt: u16,
    end_io: EndIo,
    private: usize,
    parent: Option<ChainRef<BioInner>>,
    next: Option<Bio>,
}

impl BioInner {
    pub(crate) fn new(op: Op, vecs: Option<VecBuf<BioVec>>) -> Self {
        BioInner {
            op,
            flags: BioFlags::empty(),
            dev: None,
            iter: BioIter::default(),
            vecs: match vecs {
                Some(v) => Vecs::Pool(v),
                None => Vecs::Inline([BioVec::ZERO; INLINE_VECS]),
            },
            vcnt: 0,
            end_io: EndIo::None,
            private: 0,
            parent: None,
            next: None,
        }
    }
}

impl Drop for BioInner {
    fn drop(&mut self) {
        // Drop a linked chain iteratively, not by recursion.
        let mut n = self.next.take();
        while let Some(mut b) = n {
            n = b.0.next.take();
        }
    }
}

/// One I/O: an owning handle to a bio in a `BioSet`'s slab slot (returned to it on drop).
///
/// Ownership moves with the value: the submitter, then the block layer, then `end_io`.
/// Completion ([`bio_endio`]) takes the bio by value, so it cannot complete twice.
pub struct Bio(pub(crate) Node<BioInner>);

impl fmt::Debug for Bio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bio")
            .field("op", &self.op())
            .field("sector", &self.sector())
            .field("size", &self.size())
            .field("vcnt", &self.0.vcnt)
            .finish()
    }
}

impl Bio {
    /// The operation.
    pub fn op(&self) -> Op {
        self.0.op
    }
    /// Changes the operation.
    pub fn set_op(&mut self, op: Op) {
        self.0.op = op;
    }
    /// Flags.
    pub fn flags(&self) -> BioFlags {
        self.0.flags
    }
    /// Sets the flags.
    pub fn set_flags(&mut self, f: BioFlags) {
        self.0.flags = f;
    }
    /// Start sector of what is left.
    pub fn sector(&self) -> u64 {
        self.0.iter.sector
    }
    /// Sets the start sector.
    pub fn set_sector(&mut self, s: u64) {
        self.0.iter.sector = s;
    }
    /// Bytes left.
    pub fn size(&self) -> u32 {
        self.0.iter.size
    }
    /// Sectors left.
    pub fn sectors(&self) -> u64 {
        (self.0.iter.size >> SECTOR_SHIFT) as u64
    }
    /// One past the last sector.
    pub fn end_sector(&self) -> u64 {
        self.sector() + self.sectors()
    }
    /// The iterator.
    pub fn iter(&self) -> BioIter {
        self.0.iter
    }
    /// The target device.
    pub fn dev(&self) -> Option<&'static dyn BlockDevice> {
        self.0.dev
    }
    /// Sets the target device.
    pub fn set_dev(&mut self, dev: &'static dyn BlockDevice) {
        self.0.dev = Some(dev);
    }
    /// Whether the bio targets `dev` (same object).
    pub fn is_for(&self, dev: &dyn BlockDevice) -> bool {
        self.0.dev.is_some_and(|d| {
            core::ptr::addr_eq(d as *const dyn BlockDevice, dev as *const dyn BlockDevice)
        })
    }
    /// Vectors this bio can hold.
    pub fn max_vecs(&self) -> usize {
        self.0.vecs.slice().len()
    }
    /// All vectors added (whatever the iterator position).
    pub fn vecs(&self) -> &[BioVec] {
        &self.0.vecs.slice()[..self.0.vcnt as usize]
    }
    /// Appends a segment (and grows the size).
    pub fn add_vec(&mut self, v: BioVec) -> Result<(), BlkError> {
        let n = self.0.vcnt as usize;
        if !self.0.op.has_data() {
            return Err(BlkError::Unsupported);
        }
        if n >= self.0.vecs.slice().len() {
            return Err(BlkError::InvalidArgument);
        }
        let size = self
            .0
            .iter
            .size
            .checked_add(v.len)
            .ok_or(BlkError::InvalidArgument)?;
        self.0.vecs.slice_mut()[n] = v;
        self.0.vcnt += 1;
        self.0.iter.size = size;
        Ok(())
    }
    /// Makes a bio whose completion has run (its `end_io` took it by value) a new, empty bio
    /// for `op` again: no vector, flags, device, error or completion; its vector array (inline
    /// or from a pool) and front pad are kept. For a stacking device that keeps its own bios
    /// instead of freeing and allocating them per I/O. Refused (`false`) while it has a chain
    /// parent, a child or a next link.
    pub(crate) fn reuse(&mut self, op: Op) -> bool {
        if self.0.parent.is_some() || self.0.next.is_some() || self.0.hdr().remaining() != 1 {
            return false;
        }
        let inner = &mut *self.0;
        inner.op = op;
        inner.flags = BioFlags::empty();
        inner.dev = None;
        inner.iter = BioIter::default();
        inner.vcnt = 0;
        inner.end_io = EndIo::None;
        inner.private = 0;
        self.0.hdr().set_status(0);
        true
    }
    /// Makes this bio (new, no vector added) carry `src`'s data as it stands: its vectors and
    /// iterator position copied as they are, without walking the segments. Needs room for
    /// all of `src`'s vectors ([`Bio::vecs`]), and a data op on both.
    pub(crate) fn copy_data_from(&mut self, src: &Bio) -> Result<(), BlkError> {
        let n = src.0.vcnt as usize;
        if !self.0.op.has_data() || !src.0.op.has_data() || self.0.vcnt != 0 {
            return Err(BlkError::InvalidArgument);
        }
        let to = self
            .0
            .vecs
            .slice_mut()
            .get_mut(..n)
            .ok_or(BlkError::InvalidArgument)?;
        to.copy_from_slice(&src.0.vecs.slice()[..n]);
        self.0.vcnt = n as u16;
        self.0.iter = src.0.iter;
        Ok(())
    }
    /// Sets the byte size of a data-less op (discard, write-zeroes).
    pub fn set_size(&mut self, bytes: u32) -> Result<(), BlkError> {
        if self.0.op.has_data() {
            return Err(BlkError::InvalidArgument);
        }
        self.0.iter.size = bytes;
        Ok(())
    }
    /// The segments left to transfer.
    pub fn segments(&self) -> Segments<'_> {
        Segments::new(self.vecs(), self.0.iter)
    }
    /// Marks `bytes` done (partial completion, split).
    pub fn advance(&mut self, bytes: u32) {
        let inner = &mut *self.0;
        let vecs = &inner.vecs.slice()[..inner.vcnt as usize];
        inner.iter.advance(vecs, bytes);
    }
    /// Marks everything done (a request completed in full): the same as
    /// `advance(self.size())`, without walking the segments.
    pub(crate) fn advance_all(&mut self) {
        let inner = &mut *self.0;
        let it = &mut inner.iter;
        it.sector += (it.size >> SECTOR_SHIFT) as u64;
        it.size = 0;
        it.idx = inner.vcnt;
        it.done = 0;
    }
    /// The status so far (the first error recorded, or Ok).
    pub fn status(&self) -> BlkStatus {
        status_from_code(self.0.hdr().status())
    }
    /// Records an error unless one is recorded already.
    pub fn fail(&self, e: BlkError) {
        self.0.hdr().set_status_once(e.code());
    }
    /// Overwrites the status (e.g. to reuse a bio).
    pub fn set_status(&self, s: BlkStatus) {
        self.0.hdr().set_status(status_code(s));
    }
    /// Sets the completion callback.
    pub fn set_end_io(&mut self, f: fn(Bio)) {
        self.0.end_io = EndIo::Callback(f);
    }
    /// Removes the completion callback.
    pub fn clear_end_io(&mut self) {
        self.0.end_io = EndIo::None;
    }
    /// Sets the completion to `hook` (see [`EndIo::Hook`]).
    pub fn set_end_hook(&mut self, hook: &'static dyn EndHook) {
        self.0.end_io = EndIo::Hook(hook);
    }
    /// Sets the completion as [`Bio::end_io`] returned it (to put an owner's back).
    pub fn restore_end_io(&mut self, e: EndIo) {
        self.0.end_io = e;
    }
    /// The completion callback.
    pub fn end_io(&self) -> EndIo {
        self.0.end_io
    }
    /// The private word (for the owner of the bio; the block layer never reads it).
    pub fn private(&self) -> usize {
        self.0.private
    }
    /// Sets the private word.
    pub fn set_private(&mut self, p: usize) {
        self.0.private = p;
    }
    /// The front pad, if this bio comes from a `BioSet<F>`.
    pub fn front<F: 'static>(&self) -> Option<&F> {
        self.0.front::<F>()
    }
    /// Whether the bio set this bio came from has no bio left (shared slab, reserve and
    /// magazines empty): the next may-wait allocation from it would wait.
    pub fn pool_exhausted(&self) -> bool {
        self.0.pool_exhausted()
    }
    /// The front pad, mutably.
    pub fn front_mut<F: 'static>(&mut self) -> Option<&mut F> {
        self.0.front_mut::<F>()
    }
    /// Makes this bio a child of `parent`: `parent` completes only after this bio has, and
    /// gets this bio's error if it is the first.
    pub fn chain_to(&mut self, parent: &Bio) {
        self.0.parent = Some(parent.0.chain_ref());
    }
    /// Whether this bio has a chain parent.
    pub fn has_parent(&self) -> bool {
        self.0.parent.is_some()
    }
    /// The chain count: 1 + children still outstanding.
    pub fn remaining(&self) -> u32 {
        self.0.hdr().remaining()
    }
    /// Copies op, flags, device and iterator position from `src` (for clones).
    pub(crate) fn copy_meta_from(&mut self, src: &Bio) {
        self.0.op = src.0.op;
        self.0.flags = src.0.flags;
        self.0.dev = src.0.dev;
        self.0.iter.sector = src.0.iter.sector;
    }
    pub(crate) fn waiter(&mut self) -> Option<WaitRef<BioInner>> {
        self.0.waiter()
    }
    pub(crate) fn take_next(&mut self) -> Option<Bio> {
        self.0.next.take()
    }
    pub(crate) fn set_next(&mut self, n: Option<Bio>) {
        self.0.next = n;
    }
    pub(crate) fn next_ref(&self) -> Option<&Bio> {
        self.0.next.as_ref()
    }
}

/// Completes `bio`: drops its own chain reference; when no child is left, the chain parent is
/// credited (first error wins) and `end_io` gets the bio. Parents whose last child this was
/// complete in turn, in a loop (no recursion up a chain).
pub fn bio_endio(bio: Bio) {
    let Some(node) = bio.0.put() else { return };
    let mut cur = Bio(node);
    loop {
        let end_io = core::mem::take(&mut cur.0.end_io);
        if let EndIo::Hook(h) = end_io {
            // The hook gets the bio with its chain parent still linked, and ends it again.
            h.bio_end(cur);
            return;
        }
        let parent = cur.0.parent.take();
        let code = cur.0.hdr().status();
        match end_io {
            EndIo::Callback(f) => f(cur),
            _ => drop(cur),
        }
        let Some(p) = parent else { return };
        if code != 0 {
            p.hdr().set_status_once(code);
        }
        match p.put() {
            Some(n) => cur = Bio(n),
            None => return,
        }
    }
}

/// Ends `bio` with error `e` (kept if it is the first).
pub fn bio_io_error(bio: Bio, e: BlkError) {
    bio.fail(e);
    bio_endio(bio);
}

/// A FIFO of bios linked through the bios themselves (no allocation).
///
/// Two stacks: `push_back` goes on `back`, `push_front` and `pop_front` use `front`, and
/// `back` is reversed into `front` when `front` runs dry. `iter` is in order after
/// [`BioList::normalize`] (or when only `push_front`/`pop_front` were used since).
#[derive(Default)]
pub struct BioList {
    front: Option<Bio>,
    back: Option<Bio>,
    len: usize,
}

impl fmt::Debug for BioList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BioList({})", self.len)
    }
}

#[inline]
fn stack_push(top: &mut Option<Bio>, mut b: Bio) {
    b.set_next(top.take());
    *top = Some(b);
}

#[inline]
fn stack_pop(top: &mut Option<Bio>) -> Option<Bio> {
    let mut b = top.take()?;
    *top = b.take_next();
    Some(b)
}

impl BioList {
    /// An empty list.
    pub const fn new() -> Self {
        BioList {
            front: None,
            back: None,
            len: 0,
        }
    }
    /// Number of bios.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Appends.
    #[inline]
    pub fn push_back(&mut self, b: Bio) {
        stack_push(&mut self.back, b);
        self.len += 1;
    }
    /// Prepends.
    #[inline]
    pub fn push_front(&mut self, b: Bio) {
        stack_push(&mut self.front, b);
        self.len += 1;
    }
    /// Takes the first bio.
    #[inline]
    pub fn pop_front(&mut self) -> Option<Bio> {
        if self.front.is_none() {
            while let Some(b) = stack_pop(&mut self.back) {
                stack_push(&mut self.front, b);
            }
        }
        let b = stack_pop(&mut self.front)?;
        self.len -= 1;
        Some(b)
    }
    /// Moves all of `other` to the end of this list.
    #[inline]
    pub fn append(&mut self, other: &mut BioList) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            core::mem::swap(self, other);
            return;
        }
        while let Some(b) = other.pop_front() {
            self.push_back(b);
        }
    }
    /// Puts every bio in `front` in order, so `iter` and `first` see the list order.
    pub fn normalize(&mut self) {
        if self.back.is_none() {
            return;
        }
        let mut rev_front = None;
        while let Some(b) = stack_pop(&mut self.front) {
            stack_push(&mut rev_front, b);
        }
        let mut out = None;
        while let Some(b) = stack_pop(&mut self.back) {
            stack_push(&mut out, b);
        }
        while let Some(b) = stack_pop(&mut rev_front) {
            stack_push(&mut out, b);
        }
        self.front = out;
    }
    /// The first bio (after `normalize`, or when `back` is empty).
    pub fn first(&self) -> Option<&Bio> {
        self.front.as_ref().or(self.back.as_ref())
    }
    /// Iterates in order if normalized (see the type docs).
    pub fn iter(&self) -> BioListIter<'_> {
        BioListIter {
            cur: self.front.as_ref(),
            then: self.back.as_ref(),
        }
    }
}

impl Drop for BioList {
    #[inline]
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        while self.pop_front().is_some() {}
    }
}

/// Iterator over a [`BioList`].
pub struct BioListIter<'a> {
    cur: Option<&'a Bio>,
    then: Option<&'a Bio>,
}

impl<'a> Iterator for BioListIter<'a> {
    type Item = &'a Bio;
    fn next(&mut self) -> Option<&'a Bio> {
        if self.cur.is_none() {
            self.cur = self.then.take();
        }
        let b = self.cur?;
        self.cur = b.next_ref();
        Some(b)
    }
}
