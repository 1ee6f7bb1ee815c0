//! Model-based test: random operations against an in-memory model, compared after every step
//! and after unmount/remount, with `fsync` and crashes (the instance dropped without an
//! unmount) checked against what `fsync` and `sync` promise ([`History`]).

use std::collections::BTreeMap;

use super::{Rng, scale};
use crate::host::MemDisk;
use crate::v1::*;

pub type SmallFs<'b, D> = Fs<'b, D, 4, 64>;

/// What the model test drives: the path API both format versions share ([`Fs`] and
/// [`crate::v2::Fs`]), so one test runs against each.
pub trait ModelFs {
    /// The filesystem's inode handle.
    type Ino: Copy;
    fn root(&self) -> Self::Ino;
    fn create(&mut self, p: &str) -> Result<Self::Ino>;
    fn mkdir(&mut self, p: &str) -> Result<Self::Ino>;
    fn open(&mut self, p: &str) -> Result<Self::Ino>;
    fn write(&mut self, ino: Self::Ino, off: u64, data: &[u8]) -> Result<usize>;
    /// Writes through the zero-copy path where the filesystem has one.
    fn zero_copy_write(&mut self, rng: &mut Rng, ino: Self::Ino, off: u64, data: &[u8]) {
        let _ = rng;
        assert_eq!(self.write(ino, off, data), Ok(data.len()));
    }
    fn append(&mut self, ino: Self::Ino, data: &[u8]) -> Result<u64>;
    fn truncate(&mut self, ino: Self::Ino, size: u64) -> Result<()>;
    fn unlink(&mut self, p: &str) -> Result<()>;
    fn rmdir(&mut self, p: &str) -> Result<()>;
    fn rename(&mut self, from: &str, to: &str) -> Result<()>;
    fn sync(&mut self) -> Result<()>;
    fn fsync(&mut self, ino: Self::Ino) -> Result<()>;
    fn read(&mut self, ino: Self::Ino, off: u64, out: &mut [u8]) -> Result<usize>;
    /// The entry at `cookie`: name, inode, kind and the next cookie.
    #[allow(clippy::type_complexity)]
    fn readdir(
        &mut self,
        dir: Self::Ino,
        cookie: u64,
    ) -> Result<Option<(Vec<u8>, Self::Ino, Kind, u64)>>;
}

impl<D: BlockIo> ModelFs for SmallFs<'_, D> {
    type Ino = Ino;
    fn root(&self) -> Ino {
        Ino::ROOT
    }
    fn create(&mut self, p: &str) -> Result<Ino> {
        Fs::create(self, p)
    }
    fn mkdir(&mut self, p: &str) -> Result<Ino> {
        Fs::mkdir(self, p)
    }
    fn open(&mut self, p: &str) -> Result<Ino> {
        Fs::open(self, p)
    }
    fn write(&mut self, ino: Ino, off: u64, data: &[u8]) -> Result<usize> {
        Fs::write(self, ino, off, data)
    }
    fn zero_copy_write(&mut self, rng: &mut Rng, ino: Ino, off: u64, data: &[u8]) {
        zero_copy_write(rng, self, ino, off, data)
    }
    fn append(&mut self, ino: Ino, data: &[u8]) -> Result<u64> {
        Fs::append(self, ino, data)
    }
    fn truncate(&mut self, ino: Ino, size: u64) -> Result<()> {
        Fs::truncate(self, ino, size)
    }
    fn unlink(&mut self, p: &str) -> Result<()> {
        Fs::unlink(self, p)
    }
    fn rmdir(&mut self, p: &str) -> Result<()> {
        Fs::rmdir(self, p)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        Fs::rename(self, from, to)
    }
    fn sync(&mut self) -> Result<()> {
        Fs::sync(self)
    }
    fn fsync(&mut self, ino: Ino) -> Result<()> {
        Fs::fsync(self, ino)
    }
    fn read(&mut self, ino: Ino, off: u64, out: &mut [u8]) -> Result<usize> {
        Fs::read(self, ino, off, out)
    }
    fn readdir(&mut self, dir: Ino, cookie: u64) -> Result<Option<(Vec<u8>, Ino, Kind, u64)>> {
        Ok(Fs::readdir(self, dir, cookie as u32)?
            .map(|(e, next)| (e.name().to_vec(), e.ino, e.kind, u64::from(next))))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A file: an identity that follows it through renames (never reused), and its bytes.
    File {
        id: u64,
        data: Vec<u8>,
    },
    Dir,
}

/// The model: path (with a leading slash; "" = root) -> node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub nodes: BTreeMap<String, Node>,
    /// The next file identity handed out.
    pub next_id: u64,
}

const PATHS: &[&str] = &[
    "/a", "/b", "/c", "/d1", "/d2", "/d1/a", "/d1/b", "/d2/a", "/d2/c", "/d1/d2", "/d1/d2/x",
];

fn parent_of(p: &str) -> &str {
    p.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

impl Model {
    /// A new empty file with an identity of its own.
    fn new_file(&mut self) -> Node {
        self.next_id += 1;
        Node::File {
            id: self.next_id,
            data: Vec::new(),
        }
    }
    /// The bytes of file `id`, if it has a name.
    fn file(&self, id: u64) -> Option<&[u8]> {
        self.nodes.values().find_map(|n| match n {
            Node::File { id: i, data } if *i == id => Some(&data[..]),
            _ => None,
        })
    }
    fn dir_check(&self, dir: &str) -> Result<()> {
        if dir.is_empty() {
            return Ok(());
        }
        // Walk from the root like the filesystem does.
        let mut cur = String::new();
        for c in dir.split('/').filter(|c| !c.is_empty()) {
            match self.nodes.get(&cur) {
                Some(Node::Dir) | None if cur.is_empty() => {}
                Some(Node::Dir) => {}
                Some(Node::File { .. }) => return Err(FsError::NotDir),
                None => return Err(FsError::NotFound),
            }
            cur.push('/');
            cur.push_str(c);
        }
        match self.nodes.get(&cur) {
            Some(Node::Dir) => Ok(()),
            Some(Node::File { .. }) => Err(FsError::NotDir),
            None => Err(FsError::NotFound),
        }
    }
    fn lookup(&self, p: &str) -> Result<&Node> {
        self.dir_check(parent_of(p))?;
        self.nodes.get(p).ok_or(FsError::NotFound)
    }
    fn has_children(&self, p: &str) -> bool {
        self.nodes.keys().any(|k| parent_of(k) == p)
    }
    fn create(&mut self, p: &str, node: Node) -> Result<()> {
        self.dir_check(parent_of(p))?;
        if self.nodes.contains_key(p) {
            return Err(FsError::Exists);
        }
        self.nodes.insert(p.into(), node);
        Ok(())
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let src = self.lookup(from)?.clone();
        self.dir_check(parent_of(to))?;
        if src == Node::Dir && (to.starts_with(&format!("{from}/"))) {
            return Err(FsError::InvalidArgument);
        }
        if let Some(dst) = self.nodes.get(to) {
            if from == to {
                return Ok(());
            }
            match (&src, dst) {
                (Node::File { .. }, Node::Dir) => return Err(FsError::IsDir),
                (Node::Dir, Node::File { .. }) => return Err(FsError::NotDir),
                (Node::Dir, Node::Dir) if self.has_children(to) => return Err(FsError::NotEmpty),
                _ => {}
            }
        }
        let moved: Vec<(String, Node)> = self
            .nodes
            .iter()
            .filter(|(k, _)| *k == from || k.starts_with(&format!("{from}/")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, _) in &moved {
            self.nodes.remove(k);
        }
        self.nodes.remove(to);
        for (k, v) in moved {
            self.nodes.insert(format!("{to}{}", &k[from.len()..]), v);
        }
        Ok(())
    }
}

/// One random step applied to both; returns false when it was a sync (so callers can snapshot).
pub fn step<F: ModelFs>(rng: &mut Rng, fs: &mut F, m: &mut Model, big: bool) -> bool {
    step_syncing(rng, fs, m, big, 100)
}

/// [`step`] where only `sync_pct` percent of the syncs it would do happen (a write instead).
fn step_syncing<F: ModelFs>(
    rng: &mut Rng,
    fs: &mut F,
    m: &mut Model,
    big: bool,
    sync_pct: u64,
) -> bool {
    let p = PATHS[rng.below(PATHS.len() as u64) as usize];
    let q = PATHS[rng.below(PATHS.len() as u64) as usize];
    let mut op = rng.below(14);
    if op >= 12 && sync_pct < 100 && !rng.chance(sync_pct) {
        op = 3;
    }
    match op {
        0 | 1 => {
            let r = fs.create(p).map(|_| ());
            let file = m.new_file();
            assert_eq!(r, m.create(p, file), "create {p}");
        }
        2 => {
            let r = fs.mkdir(p).map(|_| ());
            assert_eq!(r, m.create(p, Node::Dir), "mkdir {p}");
        }
        3..=5 => {
            // write anywhere
            if let Ok(Node::File { .. }) = m.lookup(p) {
                let ino = fs.open(p).unwrap();
                let off = if rng.chance(50) {
                    rng.below(20_000)
                } else {
                    rng.below(3) * 4096
                };
                let len = if big && rng.chance(20) {
                    rng.below(70_000)
                } else {
                    rng.below(9000)
                };
                let byte = rng.below(255) as u8 + 1;
                let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                if rng.chance(50) {
                    assert_eq!(fs.write(ino, off, &data), Ok(data.len()));
                } else {
                    fs.zero_copy_write(rng, ino, off, &data);
                }
                if let Some(Node::File { data: v, .. }) = m.nodes.get_mut(p)
                    && len > 0
                {
                    let end = (off + len) as usize;
                    if v.len() < end {
                        v.resize(end, 0);
                    }
                    v[off as usize..end].copy_from_slice(&data);
                }
            }
        }
        6 => {
            if let Ok(Node::File { .. }) = m.lookup(p) {
                let ino = fs.open(p).unwrap();
                let data = vec![rng.below(256) as u8; rng.below(6000) as usize];
                fs.append(ino, &data).unwrap();
                if let Some(Node::File { data: v, .. }) = m.nodes.get_mut(p) {
                    v.extend_from_slice(&data);
                }
            }
        }
        7 => {
            if let Ok(Node::File { .. }) = m.lookup(p) {
                let ino = fs.open(p).unwrap();
                let size = rng.below(30_000);
                fs.truncate(ino, size).unwrap();
                if let Some(Node::File { data: v, .. }) = m.nodes.get_mut(p) {
                    v.resize(size as usize, 0);
                }
            }
        }
        8 => {
            let want = match m.lookup(p) {
                Ok(Node::File { .. }) => {
                    m.nodes.remove(p);
                    Ok(())
                }
                Ok(Node::Dir) => Err(FsError::IsDir),
                Err(e) => Err(e),
            };
            assert_eq!(fs.unlink(p), want, "unlink {p}");
        }
        9 => {
            let want = match m.lookup(p) {
                Ok(Node::Dir) if m.has_children(p) => Err(FsError::NotEmpty),
                Ok(Node::Dir) => {
                    m.nodes.remove(p);
                    Ok(())
                }
                Ok(Node::File { .. }) => Err(FsError::NotDir),
                Err(e) => Err(e),
            };
            assert_eq!(fs.rmdir(p), want, "rmdir {p}");
        }
        10 | 11 => {
            let want = m.rename(p, q);
            assert_eq!(fs.rename(p, q), want, "rename {p} {q}");
        }
        _ => {
            fs.sync().unwrap();
            return false;
        }
    }
    true
}

/// Writes `data` at `off` through [`Fs::write_buffer`] (the zero-copy path), sometimes
/// dropping a lent region uncommitted first (which must change nothing).
pub fn zero_copy_write<D: BlockIo>(
    rng: &mut Rng,
    fs: &mut SmallFs<'_, D>,
    ino: Ino,
    off: u64,
    data: &[u8],
) {
    let mut done = 0usize;
    while done < data.len() {
        let at = off + done as u64;
        if rng.chance(10) {
            // Abandoned twice: the first may have compacted the file (a change of its own),
            // the second must leave the free count as it was.
            let mut free = 0;
            for _ in 0..2 {
                let mut w = fs.write_buffer(ino, at, data.len() - done).unwrap();
                w.buf().fill(0xee);
                drop(w);
                let now = fs.statfs().unwrap().free_blocks;
                assert!(free == 0 || now == free, "abandoned region kept blocks");
                free = now;
            }
        }
        let mut w = fs.write_buffer(ino, at, data.len() - done).unwrap();
        let n = w.len();
        assert!(n > 0 && n <= data.len() - done);
        assert_eq!(w.offset(), at);
        w.buf().copy_from_slice(&data[done..done + n]);
        assert_eq!(w.commit().unwrap(), n);
        done += n;
    }
}

/// Compares the whole tree (listing, kinds, sizes, contents).
pub fn compare<F: ModelFs>(fs: &mut F, m: &Model) -> std::result::Result<(), String> {
    let mut seen = 0;
    let mut stack = vec![(String::new(), fs.root())];
    while let Some((path, dir)) = stack.pop() {
        let mut cookie = 0;
        while let Some((name, ino, kind, next)) = fs
            .readdir(dir, cookie)
            .map_err(|e| format!("readdir {path}: {e}"))?
        {
            cookie = next;
            seen += 1;
            let p = format!("{path}/{}", String::from_utf8_lossy(&name));
            match (m.nodes.get(&p), kind) {
                (Some(Node::Dir), Kind::Dir) => stack.push((p, ino)),
                (Some(Node::File { data: v, .. }), Kind::File) => {
                    let mut out = vec![0u8; v.len() + 10];
                    let n = fs
                        .read(ino, 0, &mut out)
                        .map_err(|e| format!("read {p}: {e}"))?;
                    if n != v.len() || out[..n] != v[..] {
                        return Err(format!(
                            "{p}: contents differ (fs {n} bytes, model {})",
                            v.len()
                        ));
                    }
                }
                (want, got) => return Err(format!("{p}: fs has {got:?}, model {want:?}")),
            }
        }
    }
    if seen != m.nodes.len() {
        return Err(format!("fs has {seen} entries, model {}", m.nodes.len()));
    }
    Ok(())
}

/// Percent of [`durable_step`]s that `fsync` a file.
const FSYNC_PCT: u64 = 15;
/// Percent of [`step`]'s syncs that [`durable_step`] does (fewer syncs leave longer runs of
/// operations for a crash to cut into).
const SYNC_PCT: u64 = 20;

/// One step of the model test with durability: `fsync` of a random file ([`FSYNC_PCT`]
/// percent of the time) or a [`step`] with fewer syncs, recorded in `h`.
pub fn durable_step<F: ModelFs>(rng: &mut Rng, fs: &mut F, m: &mut Model, h: &mut History) {
    if rng.chance(FSYNC_PCT) {
        let files: Vec<(&String, u64)> = m
            .nodes
            .iter()
            .filter_map(|(p, n)| match n {
                Node::File { id, .. } => Some((p, *id)),
                Node::Dir => None,
            })
            .collect();
        if files.is_empty() {
            h.record(m);
            return;
        }
        let (p, id) = files[rng.below(files.len() as u64) as usize];
        let ino = fs.open(p).unwrap();
        assert_eq!(fs.fsync(ino), Ok(()), "fsync {p}");
        h.fsynced(id, m);
    } else if step_syncing(rng, fs, m, true, SYNC_PCT) {
        h.record(m);
    } else {
        h.synced(m);
    }
}

/// What a crash may leave of the operations since the last `sync`, as both format versions
/// promise it (version 1's `fsync` commits everything; version 2's writes a log block or
/// commits): the filesystem mounted after the crash must be the model as it was after some
/// operation `k` at or after the last `sync` (a commit point: a `sync`, or any `fsync`,
/// which may commit), except that
/// - a file `fsync`ed after `k` (under the name it had at `k`) holds its bytes as of its last
///   `fsync`, or as of any later operation (a later commit may have made a newer state
///   durable);
/// - a file created after `k` and `fsync`ed after it may exist (an `fsync` that logs a new
///   file's name makes it durable without a commit) under a name it had, holding such bytes,
///   also where that name held something else at `k`; and so may a directory created after
///   `k`.
///
/// So an `fsync` that does not make the file durable fails the check as soon as the file
/// changed between the commit and the `fsync`, while names and unrelated files are free to be
/// in any state the operations passed through at a commit point.
pub struct History {
    /// The model after each operation since the last `sync` (`snaps[0]`: as of the `sync`).
    snaps: Vec<Model>,
    /// `(i, id)`: operation `i` (its model is `snaps[i]`) `fsync`ed file `id`.
    fsyncs: Vec<(usize, u64)>,
    /// Crashes checked, and those where an `fsync`ed file held bytes the last commit
    /// before it did not have (the log, not a commit, kept them).
    pub crashes: u64,
    pub fsync_mattered: u64,
}

/// A node as read back from the filesystem.
#[derive(Debug, PartialEq)]
enum Seen {
    File(Vec<u8>),
    Dir,
}

impl History {
    /// Starts from a durable state (just mounted, or synced).
    pub fn new(m: &Model) -> Self {
        History {
            snaps: std::vec![m.clone()],
            fsyncs: Vec::new(),
            crashes: 0,
            fsync_mattered: 0,
        }
    }

    /// An operation other than `sync` and `fsync` ran; `m` is the model after it.
    pub fn record(&mut self, m: &Model) {
        self.snaps.push(m.clone());
    }

    /// `fsync` of file `id` returned.
    pub fn fsynced(&mut self, id: u64, m: &Model) {
        self.fsyncs.push((self.snaps.len(), id));
        self.snaps.push(m.clone());
    }

    /// `sync` (or an unmount) returned: everything before it is durable.
    pub fn synced(&mut self, m: &Model) {
        self.snaps.clear();
        self.snaps.push(m.clone());
        self.fsyncs.clear();
    }

    /// Checks the filesystem just mounted after a crash against what may survive, and
    /// returns the model of what it holds (its state is durable from here: start a new
    /// history from it).
    pub fn after_crash<F: ModelFs>(&mut self, fs: &mut F) -> std::result::Result<Model, String> {
        self.crashes += 1;
        let seen = observe(fs)?;
        let mut why = Vec::new();
        for k in (0..self.snaps.len()).rev() {
            match self.explain(k, &seen) {
                Ok(m) => {
                    // Did an fsync keep what no commit point had: is the state none of the
                    // snapshots (a filesystem whose fsync did nothing would leave one)?
                    let exact = |s: &Model| {
                        s.nodes.len() == seen.len()
                            && s.nodes.iter().all(|(p, n)| match (n, seen.get(p)) {
                                (Node::Dir, Some(Seen::Dir)) => true,
                                (Node::File { data, .. }, Some(Seen::File(got))) => data == got,
                                _ => false,
                            })
                    };
                    self.fsync_mattered += u64::from(!self.snaps.iter().any(exact));
                    return Ok(m);
                }
                // The newest few and the last sync: enough to see what went wrong.
                Err(e) if why.len() < 4 || k == 0 => why.push(format!("as of operation {k}: {e}")),
                Err(_) => {}
            }
        }
        Err(format!(
            "after a crash the filesystem is in no state the {} operations since the last sync \
             (fsyncs {:?}) may leave:\n  {}\nfs has {seen:?}",
            self.snaps.len() - 1,
            self.fsyncs,
            why.join("\n  ")
        ))
    }

    /// Whether file `id` may hold `got` after a crash that left the model as of operation `k`
    /// (where it held `at_k`).
    fn may_hold(&self, k: usize, id: u64, at_k: Option<&[u8]>, got: &[u8]) -> bool {
        let last = self
            .fsyncs
            .iter()
            .filter(|&&(i, f)| f == id && i > k)
            .map(|&(i, _)| i)
            .max();
        match last {
            None => at_k == Some(got),
            Some(j) => self.snaps[j..].iter().any(|s| s.file(id) == Some(got)),
        }
    }

    /// The model of `seen` if it is what a crash may leave with the names of operation `k`.
    fn explain(
        &self,
        k: usize,
        seen: &BTreeMap<String, Seen>,
    ) -> std::result::Result<Model, String> {
        let snap = &self.snaps[k];
        let mut out = Model {
            nodes: BTreeMap::new(),
            next_id: self.snaps.last().map_or(0, |m| m.next_id),
        };
        for (p, node) in &snap.nodes {
            let node = match (node, seen.get(p)) {
                (Node::Dir, Some(Seen::Dir)) => Node::Dir,
                (Node::File { id, data }, Some(Seen::File(got)))
                    if self.may_hold(k, *id, Some(data), got) =>
                {
                    Node::File {
                        id: *id,
                        data: got.clone(),
                    }
                }
                // The name may have gone to a file created and fsynced since.
                (_, Some(Seen::File(got))) if let Some(id) = self.new_file(k, p, got) => {
                    Node::File {
                        id,
                        data: got.clone(),
                    }
                }
                (Node::File { data, .. }, Some(Seen::File(got))) => {
                    return Err(format!(
                        "{p}: holds {} bytes, not its {} bytes of then nor what it held at an fsync since",
                        got.len(),
                        data.len()
                    ));
                }
                (_, got) => return Err(format!("{p}: was {node:?}, fs has {got:?}")),
            };
            out.nodes.insert(p.clone(), node);
        }
        for (p, s) in seen {
            if snap.nodes.contains_key(p) {
                continue;
            }
            let later = &self.snaps[k + 1..];
            let node = match s {
                Seen::Dir if later.iter().any(|m| m.nodes.get(p) == Some(&Node::Dir)) => Node::Dir,
                Seen::File(got) => match self.new_file(k, p, got) {
                    Some(id) => Node::File {
                        id,
                        data: got.clone(),
                    },
                    None => return Err(format!("{p}: fs has a file the model did not have")),
                },
                Seen::Dir => return Err(format!("{p}: fs has a directory the model did not have")),
            };
            out.nodes.insert(p.clone(), node);
        }
        Ok(out)
    }

    /// A file created after operation `k` and fsynced since that had the name `p` and may
    /// hold `got`.
    fn new_file(&self, k: usize, p: &str, got: &[u8]) -> Option<u64> {
        let snap = &self.snaps[k];
        self.fsyncs
            .iter()
            .map(|&(_, id)| id)
            .filter(|&id| snap.file(id).is_none() && self.may_hold(k, id, None, got))
            .find(|&id| {
                self.snaps[k + 1..]
                    .iter()
                    .any(|m| matches!(m.nodes.get(p), Some(Node::File { id: i, .. }) if *i == id))
            })
    }
}

/// Everything the filesystem holds: path -> directory or file bytes.
fn observe<F: ModelFs>(fs: &mut F) -> std::result::Result<BTreeMap<String, Seen>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(String::new(), fs.root())];
    while let Some((path, dir)) = stack.pop() {
        let mut cookie = 0;
        while let Some((name, ino, kind, next)) = fs
            .readdir(dir, cookie)
            .map_err(|e| format!("readdir {path}: {e}"))?
        {
            cookie = next;
            let p = format!("{path}/{}", String::from_utf8_lossy(&name));
            let node = match kind {
                Kind::Dir => {
                    stack.push((p.clone(), ino));
                    Seen::Dir
                }
                _ => {
                    let mut data = Vec::new();
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = fs
                            .read(ino, data.len() as u64, &mut buf)
                            .map_err(|e| format!("read {p}: {e}"))?;
                        if n == 0 {
                            break;
                        }
                        data.extend_from_slice(&buf[..n]);
                        if data.len() > 1 << 22 {
                            return Err(format!("{p}: larger than any file the model writes"));
                        }
                    }
                    Seen::File(data)
                }
            };
            if out.insert(p.clone(), node).is_some() {
                return Err(format!("{p}: listed twice"));
            }
        }
    }
    Ok(out)
}

/// Random steps with `fsync`s, compared with the model after each; a round ends with an
/// unmount or a crash (the instance dropped), then fsck; after a crash the mounted
/// filesystem is checked against the [`History`] and the model continues from it.
#[test]
fn model_random_ops_with_remount() {
    let (mut crashes, mut mattered) = (0, 0);
    for seed in 0..(8 * scale()) {
        let mut rng = Rng::new(seed + 1);
        let mut disk = MemDisk::new(2048);
        let mut buf = vec![0u8; 32 * 1024];
        let mut m = Model::default();
        {
            let mut fs = SmallFs::new(&mut disk, &mut buf);
            fs.mkfs(MkfsOptions {
                blocks: None,
                inode_blocks: 4,
            })
            .unwrap();
        }
        let mut crashed: Option<History> = None;
        for round in 0..8 {
            let mut fs = SmallFs::new(&mut disk, &mut buf);
            fs.mount(false).unwrap();
            if let Some(mut h) = crashed.take() {
                m = h
                    .after_crash(&mut fs)
                    .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
                crashes += h.crashes;
                mattered += h.fsync_mattered;
            }
            compare(&mut fs, &m)
                .unwrap_or_else(|e| panic!("seed {seed} round {round} after remount: {e}"));
            let mut h = History::new(&m);
            for i in 0..80 {
                durable_step(&mut rng, &mut fs, &mut m, &mut h);
                compare(&mut fs, &m)
                    .unwrap_or_else(|e| panic!("seed {seed} round {round} step {i}: {e}"));
            }
            if rng.chance(50) {
                fs.unmount().unwrap();
            } else {
                // A crash: the instance goes away without a commit.
                crashed = Some(h);
            }
            let mut fs = SmallFs::new(&mut disk, &mut buf);
            let st = fs
                .fsck(&mut |p| panic!("seed {seed}: fsck: {p:?}"))
                .unwrap();
            assert_eq!(st.problems, 0);
        }
    }
    // Version 1's fsync is a commit: a crash never keeps more than the last commit.
    assert!(crashes > 0);
    assert_eq!(mattered, 0);
}
