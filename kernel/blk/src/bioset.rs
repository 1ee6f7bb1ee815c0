//! `BioSet`s (bios with a front pad) and the per-size bio vector pools.

use crate::bio::{Bio, BioInner, BioVec, INLINE_VECS, MAX_VECS, Op};
use crate::error::BlkError;
use crate::slab::{Mempool, MempoolStats, NO_CPU, Node, Padded, Slab, VecBuf, Wait};

/// The slab type backing `BioSet<F>`s: `N` slots each holding a bio and an `F`.
/// All `BioSet<F>` with the same `F` may share one.
pub type BioSlab<F, const N: usize> = Slab<Padded<BioInner, F>, N>;

/// The six static slabs behind [`BvecPools`]: arrays of 1, 4, 16, 64, 128 and 256 vectors.
pub struct BvecSlabs<
    const A: usize,
    const B: usize,
    const C: usize,
    const D: usize,
    const E: usize,
    const G: usize,
> {
    s1: Slab<[BioVec; 1], A>,
    s4: Slab<[BioVec; 4], B>,
    s16: Slab<[BioVec; 16], C>,
    s64: Slab<[BioVec; 64], D>,
    s128: Slab<[BioVec; 128], E>,
    s256: Slab<[BioVec; 256], G>,
}

impl<const A: usize, const B: usize, const C: usize, const D: usize, const E: usize, const G: usize>
    Default for BvecSlabs<A, B, C, D, E, G>
{
    fn default() -> Self {
        Self::new()
    }
}

impl<const A: usize, const B: usize, const C: usize, const D: usize, const E: usize, const G: usize>
    BvecSlabs<A, B, C, D, E, G>
{
    /// Empty slabs.
    pub const fn new() -> Self {
        BvecSlabs {
            s1: Slab::new(),
            s4: Slab::new(),
            s16: Slab::new(),
            s64: Slab::new(),
            s128: Slab::new(),
            s256: Slab::new(),
        }
    }
}

/// Vector pools by size class (1, 4, 16, 64, 128, 256), each a mempool with its reserve.
pub struct BvecPools {
    p1: Mempool<[BioVec; 1]>,
    p4: Mempool<[BioVec; 4]>,
    p16: Mempool<[BioVec; 16]>,
    p64: Mempool<[BioVec; 64]>,
    p128: Mempool<[BioVec; 128]>,
    p256: Mempool<[BioVec; 256]>,
}

/// The size classes of [`BvecPools`].
pub const BVEC_CLASSES: [usize; 6] = [1, 4, 16, 64, 128, 256];

impl BvecPools {
    /// Pools over `slabs`, each keeping `min_nr` arrays in reserve.
    pub const fn new<
        const A: usize,
        const B: usize,
        const C: usize,
        const D: usize,
        const E: usize,
        const G: usize,
    >(
        slabs: &'static BvecSlabs<A, B, C, D, E, G>,
        min_nr: u32,
    ) -> Self {
        BvecPools {
            p1: Mempool::new(&slabs.s1, min_nr),
            p4: Mempool::new(&slabs.s4, min_nr),
            p16: Mempool::new(&slabs.s16, min_nr),
            p64: Mempool::new(&slabs.s64, min_nr),
            p128: Mempool::new(&slabs.s128, min_nr),
            p256: Mempool::new(&slabs.s256, min_nr),
        }
    }

    /// Fills the reserves.
    pub fn init(&self) -> Result<(), BlkError> {
        self.p1.init()?;
        self.p4.init()?;
        self.p16.init()?;
        self.p64.init()?;
        self.p128.init()?;
        self.p256.init()
    }

    /// A vector array of at least `n` entries (the smallest class that fits).
    pub fn alloc(&'static self, n: usize, wait: Wait) -> Result<VecBuf<BioVec>, BlkError> {
        self.alloc_on(NO_CPU, n, wait)
    }

    /// As [`BvecPools::alloc`], from CPU `cpu`'s magazine ([`Mempool::alloc_on`]).
    pub fn alloc_on(
        &'static self,
        cpu: u32,
        n: usize,
        wait: Wait,
    ) -> Result<VecBuf<BioVec>, BlkError> {
        let z = BioVec::ZERO;
        let r = match n {
            0..=1 => self
                .p1
                .alloc_on(cpu, [z; 1], wait)
                .map(|b| b.into_vecbuf())
                .map_err(|_| ()),
            2..=4 => self
                .p4
                .alloc_on(cpu, [z; 4], wait)
                .map(|b| b.into_vecbuf())
                .map_err(|_| ()),
            5..=16 => self
                .p16
                .alloc_on(cpu, [z; 16], wait)
                .map(|b| b.into_vecbuf())
                .map_err(|_| ()),
            17..=64 => self
                .p64
                .alloc_on(cpu, [z; 64], wait)
                .map(|b| b.into_vecbuf())
                .map_err(|_| ()),
            65..=128 => self
                .p128
                .alloc_on(cpu, [z; 128], wait)
                .map(|b| b.into_vecbuf())
                .map_err(|_| ()),
            129..=MAX_VECS => self
                .p256
                .alloc_on(cpu, [z; 256], wait)
                .map(|b| b.into_vecbuf())
                .map_err(|_| ()),
            _ => return Err(BlkError::InvalidArgument),
        };
        r.map_err(|()| BlkError::NoMemory)
    }

    /// Counters of the pool of class `class` (one of [`BVEC_CLASSES`]).
    pub fn stats(&self, class: usize) -> Option<MempoolStats> {
        Some(match class {
            1 => self.p1.stats(),
            4 => self.p4.stats(),
            16 => self.p16.stats(),
            64 => self.p64.stats(),
            128 => self.p128.stats(),
            256 => self.p256.stats(),
            _ => return None,
        })
    }
}

/// Allocates bios that carry a front pad `F`: the user's per-I/O state, in the same slot.
///
/// Each `BioSet` has its own reserve of `min_nr` bios on top of the slab it shares with other
/// `BioSet<F>`s; vectors beyond the 4 inline ones come from its [`BvecPools`].
pub struct BioSet<F: 'static> {
    pool: Mempool<Padded<BioInner, F>>,
    bvecs: Option<&'static BvecPools>,
}

impl<F: Send + Sync + 'static> BioSet<F> {
    /// A bio set over `slab` with `min_nr` reserved bios and optional vector pools.
    pub const fn new<const N: usize>(
        slab: &'static BioSlab<F, N>,
        min_nr: u32,
        bvecs: Option<&'static BvecPools>,
    ) -> Self {
        BioSet {
            pool: Mempool::new(slab, min_nr),
            bvecs,
        }
    }

    /// Fills the reserves (also done lazily by the first allocation).
    pub fn init(&self) -> Result<(), BlkError> {
        self.pool.init()?;
        if let Some(b) = self.bvecs {
            b.init()?;
        }
        Ok(())
    }

    /// A new bio for `op` with room for `nr_vecs` segments, its front pad set to `front`.
    /// Waits as `wait` says when memory is short; only `Wait::Never` fails with `NoMemory`.
    /// More than 4 vectors need vector pools (`InvalidArgument` without), at most 256.
    pub fn alloc(
        &'static self,
        front: F,
        op: Op,
        nr_vecs: usize,
        wait: Wait,
    ) -> Result<Bio, BlkError> {
        self.alloc_on(NO_CPU, front, op, nr_vecs, wait)
    }

    /// As [`BioSet::alloc`] on CPU `cpu` (the caller's CPU id): the bio and its vector array
    /// come from that CPU's magazines before the shared stacks and go back there when freed,
    /// on whichever CPU the bio completes. The submission hot path of a multi-CPU kernel
    /// allocates this way; any id is sound (see [`Mempool::alloc_on`]).
    #[inline]
    pub fn alloc_on(
        &'static self,
        cpu: u32,
        front: F,
        op: Op,
        nr_vecs: usize,
        wait: Wait,
    ) -> Result<Bio, BlkError> {
        let vecs = if nr_vecs <= INLINE_VECS {
            None
        } else {
            let pools = self.bvecs.ok_or(BlkError::InvalidArgument)?;
            Some(pools.alloc_on(cpu, nr_vecs, wait)?)
        };
        Node::alloc_on(&self.pool, cpu, BioInner::new(op, vecs), front, wait)
            .map(Bio)
            .map_err(|_| BlkError::NoMemory)
    }

    /// The front pad of `bio` if it comes from a `BioSet<F>`.
    pub fn front<'b>(&self, bio: &'b Bio) -> Option<&'b F> {
        bio.front::<F>()
    }

    /// The bio mempool's counters.
    pub fn stats(&self) -> MempoolStats {
        self.pool.stats()
    }

    /// The vector pools.
    pub fn bvecs(&self) -> Option<&'static BvecPools> {
        self.bvecs
    }
}
