//! Model-based test: random operations against an in-memory model, compared after every step
//! and after unmount/remount.

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
    File(Vec<u8>),
    Dir,
}

/// The model: path (without leading slash, "" = root) -> node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub nodes: BTreeMap<String, Node>,
}

const PATHS: &[&str] = &[
    "/a", "/b", "/c", "/d1", "/d2", "/d1/a", "/d1/b", "/d2/a", "/d2/c", "/d1/d2", "/d1/d2/x",
];

fn parent_of(p: &str) -> &str {
    p.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

impl Model {
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
                Some(Node::File(_)) => return Err(FsError::NotDir),
                None => return Err(FsError::NotFound),
            }
            cur.push('/');
            cur.push_str(c);
        }
        match self.nodes.get(&cur) {
            Some(Node::Dir) => Ok(()),
            Some(Node::File(_)) => Err(FsError::NotDir),
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
                (Node::File(_), Node::Dir) => return Err(FsError::IsDir),
                (Node::Dir, Node::File(_)) => return Err(FsError::NotDir),
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
    let p = PATHS[rng.below(PATHS.len() as u64) as usize];
    let q = PATHS[rng.below(PATHS.len() as u64) as usize];
    match rng.below(14) {
        0 | 1 => {
            let r = fs.create(p).map(|_| ());
            assert_eq!(r, m.create(p, Node::File(Vec::new())), "create {p}");
        }
        2 => {
            let r = fs.mkdir(p).map(|_| ());
            assert_eq!(r, m.create(p, Node::Dir), "mkdir {p}");
        }
        3..=5 => {
            // write anywhere
            if let Ok(Node::File(_)) = m.lookup(p) {
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
                if let Some(Node::File(v)) = m.nodes.get_mut(p)
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
            if let Ok(Node::File(_)) = m.lookup(p) {
                let ino = fs.open(p).unwrap();
                let data = vec![rng.below(256) as u8; rng.below(6000) as usize];
                fs.append(ino, &data).unwrap();
                if let Some(Node::File(v)) = m.nodes.get_mut(p) {
                    v.extend_from_slice(&data);
                }
            }
        }
        7 => {
            if let Ok(Node::File(_)) = m.lookup(p) {
                let ino = fs.open(p).unwrap();
                let size = rng.below(30_000);
                fs.truncate(ino, size).unwrap();
                if let Some(Node::File(v)) = m.nodes.get_mut(p) {
                    v.resize(size as usize, 0);
                }
            }
        }
        8 => {
            let want = match m.lookup(p) {
                Ok(Node::File(_)) => {
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
                Ok(Node::File(_)) => Err(FsError::NotDir),
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
                (Some(Node::File(v)), Kind::File) => {
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

#[test]
fn model_random_ops_with_remount() {
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
        for round in 0..6 {
            let mut fs = SmallFs::new(&mut disk, &mut buf);
            fs.mount(false).unwrap();
            compare(&mut fs, &m)
                .unwrap_or_else(|e| panic!("seed {seed} round {round} after remount: {e}"));
            for i in 0..80 {
                step(&mut rng, &mut fs, &mut m, true);
                compare(&mut fs, &m)
                    .unwrap_or_else(|e| panic!("seed {seed} round {round} step {i}: {e}"));
            }
            fs.unmount().unwrap();
            let mut fs = SmallFs::new(&mut disk, &mut buf);
            let st = fs
                .fsck(&mut |p| panic!("seed {seed}: fsck: {p:?}"))
                .unwrap();
            assert_eq!(st.problems, 0);
        }
    }
}
