//! Namespaces: which are active (Identify CNS 02h, or Identify Namespace of 1..=NN one by one
//! on a controller without that list), which ones the driver attaches (the first
//! [`MAX_NS_QUEUES`] usable ones, whatever their ids, each its own block-layer queue) and why
//! each other one is not attached; each attached namespace's size, block size and write
//! protection (`NSATTR` bit 0, and the namespace write protection config feature when the
//! controller has it).

use crate::cmd::{Command, DataPtr};
use crate::ctrl::{AdminQ, ColdBatch, InitError, Nvme};
use crate::spec::{cns, feature, id_ctrl, id_ns};

/// Active namespaces recorded with their state; more are counted in
/// [`Namespaces::unlisted`].
pub const MAX_NAMESPACES: usize = 16;
/// Namespaces of one controller attached as block-layer queues, each with its own range of
/// [`QUEUE_DEPTH`](crate::QUEUE_DEPTH) command slots on the shared I/O queue pair; further usable namespaces are
/// recorded as [`NsState::NotAttached`].
pub const MAX_NS_QUEUES: usize = 4;
/// Namespace ids identified one by one on a controller without the active namespace list
/// (NVMe 1.0); ids above are counted in [`Namespaces::unscanned`], not looked at.
pub const SCAN_MAX: u32 = 64;
/// Namespace ids in one active namespace list (4 KiB of `u32`).
const LIST_IDS: usize = 1024;

/// What became of an active namespace at bring-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsState {
    /// The driver uses it (a queue of its own: [`Nvme::ns_queue`]).
    Attached,
    /// Usable, not attached: the controller already has [`MAX_NS_QUEUES`] namespaces attached.
    NotAttached,
    /// Usable, not attached: no DMA memory for the command slots of another namespace.
    NoMemory,
    /// Identify Namespace failed or timed out.
    IdentifyFailed,
    /// Its size is 0 blocks.
    Empty,
    /// A block size outside 512 bytes..=64 KiB, or a format index beyond the formats.
    BadFormat,
    /// Its format carries metadata, which this driver does not transfer.
    Metadata,
}

/// An active namespace and what became of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Its id.
    pub nsid: u32,
    /// Attached, or why not.
    pub state: NsState,
}

/// The active namespaces of a controller, in id order, as bring-up found them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespaces {
    list: [Namespace; MAX_NAMESPACES],
    len: usize,
    /// Active namespaces beyond the [`MAX_NAMESPACES`] recorded (never attached).
    pub unlisted: u32,
    /// Namespace ids above [`SCAN_MAX`] not looked at (controllers without the list only).
    pub unscanned: u32,
    /// The ids came from Identify one by one, not from the active namespace list.
    pub scanned: bool,
}

/// What Identify Namespace says of a usable namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NsInfo {
    pub(crate) block_size: u32,
    pub(crate) blocks: u64,
    pub(crate) write_protected: bool,
}

/// An attached namespace: what its block-layer queue needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsQueueInfo {
    /// Its id (every command of its queue names it).
    pub nsid: u32,
    /// Logical block size.
    pub block_size: u32,
    /// Size in logical blocks.
    pub blocks: u64,
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// Write protected (`NSATTR` bit 0, or the write protection config feature): its queue is
    /// read-only.
    pub read_only: bool,
}

impl NsQueueInfo {
    /// Nothing attached (a placeholder until bring-up fills it).
    pub(crate) const EMPTY: NsQueueInfo = NsQueueInfo {
        nsid: 0,
        block_size: 512,
        blocks: 0,
        capacity: 0,
        read_only: false,
    };

    fn new(nsid: u32, i: NsInfo) -> NsQueueInfo {
        NsQueueInfo {
            nsid,
            block_size: i.block_size,
            blocks: i.blocks,
            capacity: i.blocks.saturating_mul((i.block_size / 512) as u64),
            read_only: i.write_protected,
        }
    }
}

/// The namespaces bring-up attached, in id order (the first is the one [`Nvme::info`]
/// describes and `HwQueue for Nvme` serves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AttachedNs {
    pub(crate) list: [NsQueueInfo; MAX_NS_QUEUES],
    pub(crate) len: usize,
}

impl AttachedNs {
    const fn new() -> AttachedNs {
        AttachedNs {
            list: [NsQueueInfo::EMPTY; MAX_NS_QUEUES],
            len: 0,
        }
    }
    /// Attaches `nsid` if there is room.
    fn push(&mut self, nsid: u32, i: NsInfo) -> bool {
        match self.list.get_mut(self.len) {
            Some(slot) => {
                *slot = NsQueueInfo::new(nsid, i);
                self.len += 1;
                true
            }
            None => false,
        }
    }
}

impl Namespaces {
    /// None found yet.
    pub const fn new() -> Namespaces {
        Namespaces {
            list: [Namespace {
                nsid: 0,
                state: NsState::NotAttached,
            }; MAX_NAMESPACES],
            len: 0,
            unlisted: 0,
            unscanned: 0,
            scanned: false,
        }
    }
    /// The recorded namespaces, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Namespace> {
        self.list[..self.len].iter()
    }
    /// Active namespaces found (recorded and unlisted).
    pub fn active(&self) -> u32 {
        self.len as u32 + self.unlisted
    }
    /// The first attached namespace's id.
    pub fn attached(&self) -> Option<u32> {
        self.attached_ids().next()
    }
    /// The attached namespaces' ids, in order (queue index 0, 1, ...).
    pub fn attached_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter()
            .filter(|n| n.state == NsState::Attached)
            .map(|n| n.nsid)
    }
    /// Marks the attached namespaces from the `keep`-th on as [`NsState::NoMemory`].
    pub(crate) fn detach_from(&mut self, keep: usize) {
        let mut k = 0;
        for n in self.list[..self.len].iter_mut() {
            if n.state == NsState::Attached {
                if k >= keep {
                    n.state = NsState::NoMemory;
                }
                k += 1;
            }
        }
    }
    /// Records `nsid`, or counts it in `unlisted` when the list is full.
    fn push(&mut self, nsid: u32, state: NsState) {
        match self.list.get_mut(self.len) {
            Some(n) => {
                *n = Namespace { nsid, state };
                self.len += 1;
            }
            None => self.unlisted += 1,
        }
    }
}

impl Default for Namespaces {
    fn default() -> Self {
        Self::new()
    }
}

impl Nvme {
    /// Finds the active namespaces and attaches the first [`MAX_NS_QUEUES`] usable ones; `nn`
    /// is Identify Controller's NN, `wp_feature` its NWPC bit 0.
    pub(crate) fn discover_namespaces(
        &self,
        admin: &mut AdminQ,
        nn: u32,
        wp_feature: bool,
    ) -> Result<(Namespaces, AttachedNs), InitError> {
        let mut found = Namespaces::new();
        let mut chosen = AttachedNs::new();
        // The list exists from NVMe 1.1 on; a controller that refuses it is scanned too.
        let listed = self.info.version >= 0x0001_0100 && self.active_list(admin, &mut found);
        if !listed {
            found.scanned = true;
            found.unscanned = nn.saturating_sub(SCAN_MAX);
            for nsid in 1..=nn.min(SCAN_MAX) {
                // Inactive ids answer with an error or a zeroed structure (size 0).
                match self.identify_ns(admin, nsid, wp_feature) {
                    Err(NsState::IdentifyFailed | NsState::Empty) => {}
                    Ok(i) if chosen.push(nsid, i) => found.push(nsid, NsState::Attached),
                    Ok(_) => found.push(nsid, NsState::NotAttached),
                    Err(why) => found.push(nsid, why),
                }
            }
        } else {
            for k in 0..found.len {
                let nsid = found.list[k].nsid;
                if chosen.len == MAX_NS_QUEUES {
                    // Usable or not, it stays `NotAttached`: the queues are all taken.
                    continue;
                }
                found.list[k].state = match self.identify_ns(admin, nsid, wp_feature) {
                    Ok(i) if chosen.push(nsid, i) => NsState::Attached,
                    Ok(_) => NsState::NotAttached,
                    Err(why) => why,
                };
            }
        }
        if chosen.len == 0 {
            return Err(InitError::NoNamespace {
                active: found.active(),
                first: found.iter().next().copied(),
            });
        }
        Ok((found, chosen))
    }

    /// Identify CNS 02h into `found`; `false` if the controller refused it.
    fn active_list(&self, admin: &mut AdminQ, found: &mut Namespaces) -> bool {
        let mut done = ColdBatch::new();
        let mut c = Command::identify(cns::ACTIVE_NAMESPACES, 0);
        c.set_data(DataPtr::Prp(self.ident.phys().0, 0));
        if self.admin_sync(admin, c, &mut done).is_err() {
            return false;
        }
        let mut last = 0;
        for k in 0..LIST_IDS {
            let nsid = self.ident.read32(4 * k);
            // Ends at the first 0; ids must increase (anything else ends the list too).
            if nsid <= last || nsid == u32::MAX {
                break;
            }
            found.push(nsid, NsState::NotAttached);
            last = nsid;
        }
        true
    }

    /// Identify Namespace `nsid`: its size and format, or why it cannot be used.
    fn identify_ns(
        &self,
        admin: &mut AdminQ,
        nsid: u32,
        wp_feature: bool,
    ) -> Result<NsInfo, NsState> {
        let mut done = ColdBatch::new();
        // A stale structure must not pass for this namespace's.
        for off in (0..4096).step_by(8) {
            self.ident.write64(off, 0);
        }
        let mut c = Command::identify(cns::NAMESPACE, nsid);
        c.set_data(DataPtr::Prp(self.ident.phys().0, 0));
        self.admin_sync(admin, c, &mut done)
            .map_err(|_| NsState::IdentifyFailed)?;
        let id = &self.ident;
        let nsze = id.read64(id_ns::NSZE);
        if nsze == 0 {
            return Err(NsState::Empty);
        }
        let fmt = (id.read8(id_ns::FLBAS) & 0xf) as usize;
        if fmt > id.read8(id_ns::NLBAF) as usize {
            return Err(NsState::BadFormat);
        }
        let lbaf = id.read32(id_ns::LBAF + 4 * fmt);
        let lbads = (lbaf >> 16) & 0xff;
        if !(9..=16).contains(&lbads) {
            return Err(NsState::BadFormat);
        }
        if lbaf & 0xffff != 0 {
            return Err(NsState::Metadata);
        }
        let mut write_protected = id.read8(id_ns::NSATTR) & 1 != 0;
        if wp_feature {
            // 0: not write protected; 1, 2, 3: write protected (until changed, until a power
            // cycle, for good). A controller that fails the command keeps what NSATTR said.
            let c = Command::get_features(feature::NAMESPACE_WRITE_PROTECT, nsid);
            if let Ok(e) = self.admin_sync(admin, c, &mut done) {
                write_protected |= e.result & 7 != 0;
            }
        }
        Ok(NsInfo {
            block_size: 1 << lbads,
            blocks: nsze,
            write_protected,
        })
    }
}

/// Identify Controller's NWPC bit 0: the write protection config feature exists.
pub(crate) fn has_wp_feature(ident: &hal::DmaBuf) -> bool {
    ident.read8(id_ctrl::NWPC) & 1 != 0
}
