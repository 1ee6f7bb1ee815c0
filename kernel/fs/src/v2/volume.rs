//! The namespace on the tree (`docs/tinyfs-v2.md`, "One tree"): inodes, directory entries
//! keyed by name hash with collision handling, back references; create, lookup, stat,
//! readdir, remove, rename, sync. File data is in `file.rs`.
//!
//! Every operation checks before its first change that the free space covers its worst case
//! (a few tree updates), so `NoSpace` never leaves half an operation behind; any other error
//! fails the tree (no later commit), so an operation is all or nothing across a crash.

use super::key::{Key, kind};
use super::log::LogState;
use super::names::{Cached, NAME_FRAMES, NameCache, NameStats};
use super::node::MAX_HEIGHT;
use super::space::{FreeSpace, space_frames};
use super::superblock::{FLAG_DATA_CSUM, Superblock};
use super::tree::{MountInfo, Tree};
use crate::crc::crc32c;
use crate::error::{FsError, IoOp, Result};
use crate::format::BLOCK_SIZE;
use crate::io::BlockIo;

/// The root directory's inode number.
pub const ROOT: u64 = 16;
/// The id of the orphan items `(ORPHANS, ORPHAN, ino)`: unlinked files still being freed.
pub const ORPHANS: u64 = 2;
/// Extent items an unlink frees at once, and a commit frees of orphans before it writes: a
/// larger file stays an orphan and is freed in steps of this many (at each commit, and to
/// the end at mount).
pub const REAP_STEP: u64 = 256;
/// Longest name, in bytes.
pub const NAME_MAX: usize = 255;
/// Entries one name hash can hold (the low 16 bits of the entry's key offset).
const COLLISIONS: u64 = 1 << 16;
/// Bytes of an inode item's value.
pub const INODE_SIZE: usize = 40;
/// Bytes of a directory entry's value before the name (child inode, kind).
pub(super) const DIRENT_HDR: usize = 9;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
        }
    }
    fn from_code(c: u8, block: u64) -> Result<Kind> {
        match c {
            1 => Ok(Kind::File),
            2 => Ok(Kind::Dir),
            _ => Err(FsError::Corrupt {
                block,
                what: "unknown inode kind",
            }),
        }
    }
}

/// An inode item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inode {
    /// File or directory.
    pub kind: Kind,
    /// Links: 1 for a file; 2 + subdirectories for a directory.
    pub nlink: u32,
    /// Size in bytes (0 until file data is built).
    pub size: u64,
    /// Last change of the contents (the clock the caller set, see [`Volume::set_clock`]).
    pub mtime: u64,
    /// Last change of the inode.
    pub ctime: u64,
}

impl Inode {
    pub(super) fn encode(&self) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        b[0] = self.kind.code();
        b[4..8].copy_from_slice(&self.nlink.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..24].copy_from_slice(&self.mtime.to_le_bytes());
        b[24..32].copy_from_slice(&self.ctime.to_le_bytes());
        b
    }
    pub(super) fn decode(b: &[u8]) -> Result<Inode> {
        let bad = FsError::Corrupt {
            block: 0,
            what: "inode item of the wrong size",
        };
        if b.len() != INODE_SIZE {
            return Err(bad);
        }
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        Ok(Inode {
            kind: Kind::from_code(b[0], 0)?,
            nlink: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            size: u64_at(8),
            mtime: u64_at(16),
            ctime: u64_at(24),
        })
    }
}

/// A directory entry returned by [`Volume::readdir`].
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// The inode it names.
    pub ino: u64,
    /// Its kind.
    pub kind: Kind,
    name: [u8; NAME_MAX],
    len: u8,
}

impl Entry {
    /// The name.
    pub fn name(&self) -> &[u8] {
        &self.name[..self.len as usize]
    }
}

/// A name's hash: the high bits of its entries' key offsets.
pub(super) fn name_hash(name: &[u8]) -> u64 {
    crc32c(name) as u64
}

pub(super) fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&c| c == b'/' || c == 0)
    {
        return Err(FsError::InvalidName);
    }
    Ok(())
}

/// A version-2 filesystem's namespace: the tree, its free space, the device.
pub struct Volume<'b, D: BlockIo, const N: usize, const G: usize> {
    pub(super) dev: D,
    pub(super) tree: Tree<'b, N>,
    pub(super) space: FreeSpace<'b, G>,
    /// Directory entries recently found or made.
    names: NameCache<'b>,
    /// The data buffer: the memory past the tree's and the free space's frames, at least one
    /// block; its size bounds one data I/O (a run of blocks).
    pub(super) data: &'b mut [u8],
    /// A data write failed: nothing is committed again on this mount.
    pub(super) failed: bool,
    /// Where the next write-behind chunk goes in the data buffer (bytes from its start).
    pub(super) ring: usize,
    /// Data writes were started with [`BlockIo::write_behind`] and not yet waited for
    /// ([`Volume::quiesce`]).
    pub(super) behind: bool,
    pub(super) now: u64,
    /// The fsync log of the open transaction.
    pub(super) log: LogState,
    /// Extent items freed per step of an orphan ([`REAP_STEP`]; tests lower it).
    pub(super) reap_step: u64,
    /// The superblock of the last commit (or as mounted): a [`Volume::sync`] that would
    /// write the same commits nothing.
    durable_sb: Superblock,
}

impl<D: BlockIo, const N: usize, const G: usize> core::fmt::Debug for Volume<'_, D, N, G> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Volume")
            .field("tree", &self.tree)
            .field("space", &self.space)
            .finish()
    }
}

/// Where a name is, or would go, in a directory.
pub(super) enum Slot {
    Found { key: Key, ino: u64, kind: Kind },
    Free(Key),
}

/// Blocks of memory a [`Volume`] with `N` node frames and `G` cached groups needs at least:
/// the node cache, the free-space cache, the name cache ([`NAME_FRAMES`]) and a one-block
/// data buffer.
pub const fn volume_frames(n: usize, g: usize) -> usize {
    n + space_frames(g) + NAME_FRAMES + 1
}

impl<'b, D: BlockIo, const N: usize, const G: usize> Volume<'b, D, N, G> {
    /// Writes an empty filesystem (the root directory, inode [`ROOT`]) on the whole device
    /// with free-space groups of `group_blocks` blocks; `mem` holds [`volume_frames`]`(N, G)`
    /// blocks. `now` is the clock (the root directory's times); it is also mixed into the
    /// filesystem's identity, with what the device's superblock slots held before
    /// ([`super::superblock::FsidSeed`]), so a filesystem made again on the device gets an
    /// identity different from the one it replaces even with the same clock.
    pub fn mkfs(dev: &mut D, mem: &mut [u8], group_blocks: u32, now: u64) -> Result<()> {
        Self::mkfs_with(dev, mem, group_blocks, now, false)
    }

    /// [`Volume::mkfs`], with data checksums when `data_checksums` (every data block's CRC32C
    /// recorded when written and verified when read; a mismatch is
    /// [`FsError::DataChecksum`]).
    pub fn mkfs_with(
        dev: &mut D,
        mem: &mut [u8],
        group_blocks: u32,
        now: u64,
        data_checksums: bool,
    ) -> Result<()> {
        let mut sb = FreeSpace::<G>::mkfs(dev, mem, group_blocks)?;
        sb.next_ino = ROOT + 1;
        if data_checksums {
            sb.flags |= FLAG_DATA_CSUM;
        }
        Tree::<N>::mkfs_with(dev, mem, &sb, now)?;
        let mut vol = Volume::<&mut D, N, G>::mount(dev, mem, false)?.0;
        vol.now = now;
        let root = Inode {
            kind: Kind::Dir,
            nlink: 2,
            size: 0,
            mtime: now,
            ctime: now,
        };
        vol.put_inode(ROOT, &root)?;
        // No need to clear the log root this commit names: a log block an earlier
        // filesystem left there (or anywhere) carries that filesystem's identity, not this
        // one's.
        vol.sync()
    }

    /// Mounts the filesystem on `dev`; `mem` holds at least [`volume_frames`]`(N, G)` blocks,
    /// and every block past those enlarges the data buffer (the largest data I/O, one run).
    pub fn mount(mut dev: D, mem: &'b mut [u8], read_only: bool) -> Result<(Self, MountInfo)> {
        if mem.len() < volume_frames(N, G) * BLOCK_SIZE {
            return Err(FsError::BufferTooSmall);
        }
        let (tmem, rest) = mem.split_at_mut(N * BLOCK_SIZE);
        let (smem, rest) = rest.split_at_mut(space_frames(G) * BLOCK_SIZE);
        let (nmem, data) = rest.split_at_mut(NAME_FRAMES * BLOCK_SIZE);
        let len = data.len() / BLOCK_SIZE * BLOCK_SIZE;
        let (tree, mut info) = Tree::mount(&mut dev, tmem, read_only)?;
        let space = FreeSpace::open(smem, tree.superblock())?;
        let sb = *tree.superblock();
        let mut vol = Volume {
            dev,
            tree,
            space,
            names: NameCache::new(nmem),
            data: &mut data[..len],
            failed: false,
            ring: 0,
            behind: false,
            now: 0,
            log: LogState::new(sb.log_root, sb.next_ino),
            reap_step: REAP_STEP,
            durable_sb: sb,
        };
        // A read-only mount, or the older tree after a rollback, leaves the log alone (the
        // newer tree of a rollback folded it already; its blocks may be reused).
        if !read_only && !info.rolled_back {
            info.replayed = vol.replay()?;
            // Files unlinked before whose blocks were still being freed: a step and a
            // commit at a time, to the end.
            if vol.orphans()? > 0 {
                while vol.reap(vol.reap_step)? {
                    vol.commit()?;
                }
                vol.commit()?;
            }
        }
        Ok((vol, info))
    }

    /// Sets the clock new timestamps are taken from (the kernel's, in whatever unit it keeps).
    pub fn set_clock(&mut self, now: u64) {
        self.now = now;
    }

    /// Whether data blocks carry checksums (chosen at mkfs).
    pub fn data_checksums(&self) -> bool {
        self.tree.superblock().flags & FLAG_DATA_CSUM != 0
    }

    /// The superblock the next commit writes.
    pub fn superblock(&self) -> &Superblock {
        self.tree.superblock()
    }

    /// Commits everything: on return every change made before is durable. With nothing
    /// changed since the last commit (no tree change, no log block, nothing allocated or
    /// freed, no orphan left to free) there is nothing to make durable: no I/O.
    pub fn sync(&mut self) -> Result<()> {
        if self.failed {
            return Err(FsError::Failed {
                durable: self.tree.generation(),
            });
        }
        self.tree.writable()?;
        self.quiesce()?;
        self.reap(self.reap_step)?;
        if self.unchanged() {
            return Ok(());
        }
        self.commit()
    }

    /// Whether the open transaction changed nothing: the superblock the next commit would
    /// write equals the durable one but for its generation (a change to the tree moves its
    /// root, a creation the inode counter, an allocation or a free the free count), and no
    /// log block was written.
    fn unchanged(&self) -> bool {
        let mut sb = *self.tree.superblock();
        self.space.fill_superblock(&mut sb);
        sb == self.durable_sb && !self.log.used() && self.log.head != 0
    }

    /// Waits for the data writes a write left in flight ([`BlockIo::write_behind`]). Done
    /// before anything that reads the device's data blocks, frees blocks, reuses the data
    /// buffer from its start, or makes anything durable (a commit, a log block: their
    /// `PREFLUSH` covers completed writes only); an error among those writes fails the
    /// instance. Nothing in flight: no call to the device.
    #[inline]
    pub(super) fn quiesce(&mut self) -> Result<()> {
        self.ring = 0;
        if self.behind {
            self.behind = false;
            if let Err(e) = self.dev.drain() {
                self.failed = true;
                return Err(FsError::io(IoOp::WriteBehind, e));
            }
        }
        Ok(())
    }

    /// The commit itself: moves the log root, writes everything.
    fn commit(&mut self) -> Result<()> {
        self.quiesce()?;
        let root = self.log_before_commit()?;
        self.tree.superblock_mut().log_root = root;
        self.space.commit(&mut self.dev, &mut self.tree)?;
        let next_ino = self.tree.superblock().next_ino;
        self.log.reset(root, next_ino);
        self.durable_sb = *self.tree.superblock();
        Ok(())
    }

    /// Refuses with `NoSpace`, before any change, an operation of `updates` tree updates that
    /// the free space might not cover.
    pub(super) fn room(&self, updates: u64) -> Result<()> {
        let worst = updates * (2 * MAX_HEIGHT as u64 + 2);
        if self.space.allocatable() < worst {
            return Err(FsError::NoSpace);
        }
        Ok(())
    }

    pub(super) fn put(&mut self, key: Key, value: &[u8]) -> Result<()> {
        self.tree
            .insert(&mut self.dev, &mut self.space, &key, value)
            .map(|_| ())
    }

    pub(super) fn del(&mut self, key: Key) -> Result<()> {
        if self.tree.remove(&mut self.dev, &mut self.space, &key)? {
            Ok(())
        } else {
            Err(FsError::Corrupt {
                block: 0,
                what: "item missing",
            })
        }
    }

    pub(super) fn put_inode(&mut self, ino: u64, i: &Inode) -> Result<()> {
        self.put(Key::new(ino, kind::INODE, 0), &i.encode())
    }

    /// The inode `ino`.
    pub fn stat(&mut self, ino: u64) -> Result<Inode> {
        let mut b = [0u8; INODE_SIZE];
        match self
            .tree
            .get(&mut self.dev, &Key::new(ino, kind::INODE, 0), &mut b)?
        {
            Some(INODE_SIZE) => Inode::decode(&b),
            Some(_) => Err(FsError::Corrupt {
                block: 0,
                what: "inode item of the wrong size",
            }),
            None => Err(FsError::NotFound),
        }
    }

    fn dir(&mut self, ino: u64) -> Result<Inode> {
        let i = self.stat(ino)?;
        if i.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(i)
    }

    /// Finds `name` in `dir`: its entry (from the name cache when it has it), or the key a
    /// new entry would take.
    pub(super) fn find(&mut self, dir: u64, name: &[u8]) -> Result<Slot> {
        let hash = name_hash(name);
        if let Some(c) = self.names.get(dir, hash, name) {
            return Ok(Slot::Found {
                key: Key::new(dir, kind::DIRENT, c.offset),
                ino: c.ino,
                kind: Kind::from_code(c.kind, 0)?,
            });
        }
        self.find_in_tree(dir, name, hash)
    }

    /// [`Volume::find`] in the tree (the name cache asked already), of a name whose hash is
    /// `hash`; a name found goes into the name cache.
    fn find_in_tree(&mut self, dir: u64, name: &[u8], hash: u64) -> Result<Slot> {
        let base = hash << 16;
        let mut free = None;
        let mut expect = base;
        let mut b = [0u8; DIRENT_HDR + NAME_MAX];
        let mut from = Key::new(dir, kind::DIRENT, base);
        while let Some((k, n)) = self.tree.next(&mut self.dev, &from, &mut b)? {
            if k.id != dir || k.kind != kind::DIRENT || k.offset >= base + COLLISIONS {
                break;
            }
            if n < DIRENT_HDR + 1 || n > b.len() {
                return Err(FsError::Corrupt {
                    block: 0,
                    what: "directory entry of the wrong size",
                });
            }
            if free.is_none() && k.offset != expect {
                free = Some(expect);
            }
            expect = k.offset + 1;
            if &b[DIRENT_HDR..n] == name {
                let mut ino = [0u8; 8];
                ino.copy_from_slice(&b[..8]);
                let ino = u64::from_le_bytes(ino);
                let kind = Kind::from_code(b[8], 0)?;
                self.names.put(
                    dir,
                    hash,
                    name,
                    Cached {
                        offset: k.offset,
                        ino,
                        kind: kind.code(),
                    },
                );
                return Ok(Slot::Found { key: k, ino, kind });
            }
            match k.successor() {
                Some(s) => from = s,
                None => break,
            }
        }
        let off = free.unwrap_or(expect);
        if off >= base + COLLISIONS {
            return Err(FsError::NoSpace);
        }
        Ok(Slot::Free(Key::new(dir, kind::DIRENT, off)))
    }

    /// Looks `name` up in directory `dir`: its inode and kind.
    pub fn lookup(&mut self, dir: u64, name: &[u8]) -> Result<(u64, Kind)> {
        check_name(name)?;
        // A cached entry is in the tree, so `dir` is a directory: no need to read its inode.
        let hash = name_hash(name);
        if let Some(c) = self.names.get(dir, hash, name) {
            return Ok((c.ino, Kind::from_code(c.kind, 0)?));
        }
        self.dir(dir)?;
        match self.find_in_tree(dir, name, hash)? {
            Slot::Found { ino, kind, .. } => Ok((ino, kind)),
            Slot::Free(_) => Err(FsError::NotFound),
        }
    }

    /// Puts the entry `key` naming `ino` and its back reference; the name cache has it once
    /// both are in the tree.
    pub(super) fn put_entry(&mut self, key: Key, ino: u64, kind_: Kind, name: &[u8]) -> Result<()> {
        let mut v = [0u8; DIRENT_HDR + NAME_MAX];
        v[..8].copy_from_slice(&ino.to_le_bytes());
        v[8] = kind_.code();
        v[DIRENT_HDR..DIRENT_HDR + name.len()].copy_from_slice(name);
        self.put(key, &v[..DIRENT_HDR + name.len()])?;
        self.put(
            Key::new(ino, kind::PARENT, key.id),
            &key.offset.to_le_bytes(),
        )?;
        self.names.put(
            key.id,
            key.offset >> 16,
            name,
            Cached {
                offset: key.offset,
                ino,
                kind: kind_.code(),
            },
        );
        Ok(())
    }

    /// Lookups the name cache answered and not.
    pub fn name_stats(&self) -> NameStats {
        self.names.stats()
    }

    fn touch_dir(&mut self, dir: u64, nlink_delta: i32) -> Result<()> {
        let d = self.stat(dir)?;
        self.touch_dir_as(dir, d, nlink_delta)
    }

    /// [`Volume::touch_dir`] of a directory whose inode is `d` (read by this operation, not
    /// changed since).
    fn touch_dir_as(&mut self, dir: u64, mut d: Inode, nlink_delta: i32) -> Result<()> {
        d.nlink = d.nlink.wrapping_add_signed(nlink_delta);
        d.mtime = self.now;
        d.ctime = self.now;
        self.put_inode(dir, &d)
    }

    /// Creates `name` in directory `dir` as a `kind`; returns its inode number (never reused).
    pub fn create(&mut self, dir: u64, name: &[u8], kind_: Kind) -> Result<u64> {
        check_name(name)?;
        let d = self.dir(dir)?;
        let key = match self.find(dir, name)? {
            Slot::Found { .. } => return Err(FsError::Exists),
            Slot::Free(k) => k,
        };
        self.room(4)?;
        let ino = self.tree.superblock().next_ino;
        self.tree.superblock_mut().next_ino = ino + 1;
        if kind_ == Kind::File {
            // Its fsync logs its creation (and whatever it was written since).
            self.log.track_new(ino);
        } else {
            self.log.names = true;
        }
        let i = Inode {
            kind: kind_,
            nlink: if kind_ == Kind::Dir { 2 } else { 1 },
            size: 0,
            mtime: self.now,
            ctime: self.now,
        };
        self.put_inode(ino, &i)?;
        self.put_entry(key, ino, kind_, name)?;
        self.touch_dir_as(dir, d, i32::from(kind_ == Kind::Dir))?;
        Ok(ino)
    }

    fn is_empty_dir(&mut self, ino: u64) -> Result<bool> {
        let first = self
            .tree
            .next(&mut self.dev, &Key::new(ino, kind::DIRENT, 0), &mut [])?;
        Ok(!matches!(first, Some((k, _)) if k.id == ino && k.kind == kind::DIRENT))
    }

    /// Removes `name` from `dir`: a file, or an empty directory (`NotEmpty` otherwise).
    pub fn remove(&mut self, dir: u64, name: &[u8]) -> Result<()> {
        check_name(name)?;
        let d = self.dir(dir)?;
        let Slot::Found { key, ino, kind: k } = self.find(dir, name)? else {
            return Err(FsError::NotFound);
        };
        if k == Kind::Dir && !self.is_empty_dir(ino)? {
            return Err(FsError::NotEmpty);
        }
        self.log.forget(ino);
        self.room(6)?;
        self.log.names = true;
        self.names.forget(dir, key.offset >> 16, name);
        self.del(key)?;
        self.del(Key::new(ino, kind::PARENT, dir))?;
        if k == Kind::File {
            self.unlink_file(ino)?;
        } else {
            self.del(Key::new(ino, kind::INODE, 0))?;
        }
        self.touch_dir_as(dir, d, -i32::from(k == Kind::Dir))
    }

    /// Turns file `ino`, whose name is gone, into an orphan (link count 0, an orphan item, in
    /// the same transaction as the removal of its name) and frees up to a step of its
    /// extents; a file that small is gone at once, one without extents at once and without
    /// an orphan item. The rest is freed by later commits (and
    /// mount), a step at a time: an unlink of any size is a bounded transaction.
    fn unlink_file(&mut self, ino: u64) -> Result<()> {
        // A file with no extent or checksum item (never written, or cut to nothing) has
        // nothing to free: its inode goes at once, without an orphan item.
        let after = self
            .tree
            .next(&mut self.dev, &Key::new(ino, kind::EXTENT, 0), &mut [])?;
        if !matches!(after, Some((k, _)) if k.id == ino) {
            return self.del(Key::new(ino, kind::INODE, 0));
        }
        let mut i = self.stat(ino)?;
        i.nlink = 0;
        i.ctime = self.now;
        self.put_inode(ino, &i)?;
        self.put(Key::new(ORPHANS, kind::ORPHAN, ino), &[])?;
        let step = self.reap_step;
        match self.reap_one(ino, step) {
            Ok(_) | Err(FsError::NoSpace) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Frees up to `budget` extent items of orphan `ino`; when none are left, its checksum
    /// items, inode and orphan item go. Returns the items freed.
    fn reap_one(&mut self, ino: u64, budget: u64) -> Result<u64> {
        let n = self.free_extents_upto(ino, budget)?;
        if n < budget {
            self.drop_csums(ino, 0)?;
            self.room(2)?;
            self.del(Key::new(ino, kind::INODE, 0))?;
            self.del(Key::new(ORPHANS, kind::ORPHAN, ino))?;
        }
        Ok(n)
    }

    /// Frees up to `budget` extent items of orphans; `true` if any orphan is left (its
    /// budget spent), `false` when there is none. Running out of space stops it quietly
    /// (the orphans stay for a later commit).
    pub(super) fn reap(&mut self, budget: u64) -> Result<bool> {
        if self.tree.writable().is_err() {
            return Ok(false);
        }
        let mut left = budget;
        loop {
            let first = Key::new(ORPHANS, kind::ORPHAN, 0);
            let Some((k, _)) = self.tree.next(&mut self.dev, &first, &mut [])? else {
                return Ok(false);
            };
            if k.id != ORPHANS || k.kind != kind::ORPHAN {
                return Ok(false);
            }
            if left == 0 {
                return Ok(true);
            }
            match self.stat(k.offset) {
                Ok(i) if i.kind == Kind::File && i.nlink == 0 => {}
                _ => {
                    return Err(FsError::Corrupt {
                        block: 0,
                        what: "orphan item of an inode that is not an unlinked file",
                    });
                }
            }
            match self.reap_one(k.offset, left) {
                Ok(n) => left -= n.min(left),
                Err(FsError::NoSpace) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// Orphans: unlinked files whose blocks are not all freed yet (tests, tools).
    pub fn orphans(&mut self) -> Result<u64> {
        let mut n = 0;
        let mut from = Key::new(ORPHANS, kind::ORPHAN, 0);
        while let Some((k, _)) = self.tree.next(&mut self.dev, &from, &mut [])? {
            if k.id != ORPHANS || k.kind != kind::ORPHAN {
                break;
            }
            n += 1;
            match k.successor() {
                Some(s) => from = s,
                None => break,
            }
        }
        Ok(n)
    }

    /// The parent of directory `ino` (the root is its own).
    fn parent_of(&mut self, ino: u64) -> Result<u64> {
        if ino == ROOT {
            return Ok(ROOT);
        }
        match self
            .tree
            .next(&mut self.dev, &Key::new(ino, kind::PARENT, 0), &mut [])?
        {
            Some((k, _)) if k.id == ino && k.kind == kind::PARENT => Ok(k.offset),
            _ => Err(FsError::Corrupt {
                block: 0,
                what: "directory without a parent",
            }),
        }
    }

    /// Moves `name` of `dir` to `to_name` in `to_dir`, atomically: replaces a file, or an
    /// empty directory, of the same kind there; a directory cannot move below itself.
    pub fn rename(&mut self, dir: u64, name: &[u8], to_dir: u64, to_name: &[u8]) -> Result<()> {
        check_name(name)?;
        check_name(to_name)?;
        self.dir(dir)?;
        self.dir(to_dir)?;
        let Slot::Found { key, ino, kind: k } = self.find(dir, name)? else {
            return Err(FsError::NotFound);
        };
        if k == Kind::Dir {
            let mut up = to_dir;
            for _ in 0..1_000_000 {
                if up == ino {
                    return Err(FsError::InvalidArgument);
                }
                if up == ROOT {
                    break;
                }
                up = self.parent_of(up)?;
            }
        }
        let target = self.find(to_dir, to_name)?;
        if let Slot::Found {
            ino: t, kind: tk, ..
        } = target
        {
            if t == ino {
                return Ok(());
            }
            match (k, tk) {
                (Kind::File, Kind::Dir) => return Err(FsError::IsDir),
                (Kind::Dir, Kind::File) => return Err(FsError::NotDir),
                (Kind::Dir, Kind::Dir) if !self.is_empty_dir(t)? => {
                    return Err(FsError::NotEmpty);
                }
                _ => {}
            }
        }
        self.room(12)?;
        self.log.names = true;
        self.names.forget(dir, key.offset >> 16, name);
        self.names.forget(to_dir, name_hash(to_name), to_name);
        let new_key = match target {
            Slot::Found {
                key: tkey,
                ino: t,
                kind: tk,
            } => {
                self.log.forget(t);
                self.del(Key::new(t, kind::PARENT, to_dir))?;
                if tk == Kind::File {
                    self.unlink_file(t)?;
                } else {
                    self.del(Key::new(t, kind::INODE, 0))?;
                }
                if k == Kind::Dir {
                    self.touch_dir(to_dir, -1)?;
                }
                tkey
            }
            Slot::Free(fk) => fk,
        };
        self.del(key)?;
        self.del(Key::new(ino, kind::PARENT, dir))?;
        self.put_entry(new_key, ino, k, to_name)?;
        let dirs = i32::from(k == Kind::Dir);
        self.touch_dir(dir, -dirs)?;
        self.touch_dir(to_dir, dirs)?;
        let mut i = self.stat(ino)?;
        i.ctime = self.now;
        self.put_inode(ino, &i)
    }

    /// The first entry of `dir` at or after `cookie` (0 to start), and the cookie of the next;
    /// entries come in hash order, and one present throughout a listing is listed once.
    pub fn readdir(&mut self, dir: u64, cookie: u64) -> Result<Option<(Entry, u64)>> {
        let mut b = [0u8; DIRENT_HDR + NAME_MAX];
        let from = Key::new(dir, kind::DIRENT, cookie);
        match self.tree.next(&mut self.dev, &from, &mut b)? {
            Some((k, n)) if k.id == dir && k.kind == kind::DIRENT => {
                if !(DIRENT_HDR + 1..=b.len()).contains(&n) {
                    return Err(FsError::Corrupt {
                        block: 0,
                        what: "directory entry of the wrong size",
                    });
                }
                let mut e = Entry {
                    ino: 0,
                    kind: Kind::from_code(b[8], 0)?,
                    name: [0; NAME_MAX],
                    len: (n - DIRENT_HDR) as u8,
                };
                let mut ino = [0u8; 8];
                ino.copy_from_slice(&b[..8]);
                e.ino = u64::from_le_bytes(ino);
                e.name[..n - DIRENT_HDR].copy_from_slice(&b[DIRENT_HDR..n]);
                Ok(Some((e, k.offset + 1)))
            }
            _ => Ok(None),
        }
    }

    /// The device (for tests and tools).
    pub fn device(&mut self) -> &mut D {
        &mut self.dev
    }
}
