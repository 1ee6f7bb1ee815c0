//! A small read-only flattened device tree (DTB) reader: no allocation, every offset checked.
//!
//! Nodes are visited in document order by [`Fdt::nodes`]; each [`Node`] knows the
//! `#address-cells`/`#size-cells` of its parent (what its `reg` is encoded with) and its own
//! (what its children's and its `ranges` child side use).

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;
/// Deepest nesting followed; deeper nodes are skipped.
const MAX_DEPTH: usize = 16;

/// A device tree blob.
#[derive(Clone, Copy)]
pub struct Fdt<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn align4(x: usize) -> usize {
    (x + 3) & !3
}

/// NUL-terminated string at the start of `b` (without the NUL).
fn cstr(b: &[u8]) -> Option<&[u8]> {
    let end = b.iter().position(|&c| c == 0)?;
    Some(&b[..end])
}

impl<'a> Fdt<'a> {
    /// Total size claimed by the header at `header` (8 bytes), if the magic is right.
    pub fn total_size(header: &[u8]) -> Option<usize> {
        (be32(header, 0)? == MAGIC).then_some(be32(header, 4)? as usize)
    }

    /// Parses the header of the blob `data` (exactly `total_size` bytes or more).
    pub fn new(data: &'a [u8]) -> Option<Fdt<'a>> {
        if be32(data, 0)? != MAGIC {
            return None;
        }
        let total = be32(data, 4)? as usize;
        let data = data.get(..total)?;
        let off_struct = be32(data, 8)? as usize;
        let off_strings = be32(data, 12)? as usize;
        let size_strings = be32(data, 32)? as usize;
        let size_struct = be32(data, 36)? as usize;
        Some(Fdt {
            structs: data.get(off_struct..off_struct.checked_add(size_struct)?)?,
            strings: data.get(off_strings..off_strings.checked_add(size_strings)?)?,
        })
    }

    /// Every node, in document order.
    pub fn nodes(&self) -> Nodes<'a> {
        Nodes {
            fdt: *self,
            off: 0,
            depth: 0,
            cells: [(2, 1); MAX_DEPTH + 1],
            done: false,
        }
    }

    /// The node at absolute path `path` ("/chosen", "/cpus"); "/" is the root.
    pub fn find_path(&self, path: &str) -> Option<Node<'a>> {
        let want = path.trim_matches('/');
        let mut parts: [&str; MAX_DEPTH] = [""; MAX_DEPTH];
        let mut n = 0;
        for p in want.split('/').filter(|p| !p.is_empty()) {
            *parts.get_mut(n)? = p;
            n += 1;
        }
        // Walk in document order. `matched`: how many levels of the current node's ancestor
        // chain (the root being the first) lie on the path.
        let mut matched = 0;
        for node in self.nodes() {
            let above = node.depth - 1;
            if above > matched {
                continue; // inside a subtree off the path
            }
            if node.depth == 1 {
                matched = 1;
                if n == 0 {
                    return Some(node);
                }
                continue;
            }
            matched = above;
            let k = node.depth - 2; // path component this depth must match
            if k < n && node.name_matches(parts[k]) {
                matched = node.depth;
                if k + 1 == n {
                    return Some(node);
                }
            }
        }
        None
    }

    /// The node whose `phandle` is `ph`.
    pub fn by_phandle(&self, ph: u32) -> Option<Node<'a>> {
        self.nodes().find(|n| n.prop_u32("phandle") == Some(ph))
    }

    /// Every node whose `compatible` list has `compat`.
    pub fn compatible<'s>(&self, compat: &'s str) -> impl Iterator<Item = Node<'a>> + 's
    where
        'a: 's,
    {
        self.nodes().filter(move |n| n.is_compatible(compat))
    }

    fn token(&self, off: usize) -> Option<u32> {
        be32(self.structs, off)
    }

    fn string(&self, off: usize) -> Option<&'a [u8]> {
        cstr(self.strings.get(off..)?)
    }
}

/// Iterator over all nodes (see [`Fdt::nodes`]).
pub struct Nodes<'a> {
    fdt: Fdt<'a>,
    off: usize,
    depth: usize,
    /// `(#address-cells, #size-cells)` declared by the node at each depth (index 0: defaults).
    cells: [(u32, u32); MAX_DEPTH + 1],
    done: bool,
}

impl<'a> Iterator for Nodes<'a> {
    type Item = Node<'a>;

    fn next(&mut self) -> Option<Node<'a>> {
        while !self.done {
            let Some(tok) = self.fdt.token(self.off) else {
                self.done = true;
                break;
            };
            match tok {
                BEGIN_NODE => {
                    let name_off = self.off + 4;
                    let name = cstr(self.fdt.structs.get(name_off..)?)?;
                    let props = align4(name_off + name.len() + 1);
                    self.depth += 1;
                    self.off = props;
                    if self.depth > MAX_DEPTH {
                        continue;
                    }
                    let node = Node {
                        fdt: self.fdt,
                        name,
                        props,
                        depth: self.depth,
                        parent_cells: self.cells[self.depth - 1],
                    };
                    self.cells[self.depth] = (
                        node.prop_u32("#address-cells").unwrap_or(2),
                        node.prop_u32("#size-cells").unwrap_or(1),
                    );
                    return Some(node);
                }
                END_NODE => {
                    self.depth = self.depth.saturating_sub(1);
                    self.off += 4;
                }
                PROP => {
                    let len = self.fdt.token(self.off + 4)? as usize;
                    self.off = align4(self.off + 12 + len);
                }
                NOP => self.off += 4,
                END => self.done = true,
                _ => self.done = true, // garbage: stop rather than guess
            }
        }
        None
    }
}

/// One node of the tree.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    fdt: Fdt<'a>,
    name: &'a [u8],
    /// Offset of the node's first property token.
    props: usize,
    /// 1 for the root.
    pub depth: usize,
    /// `(#address-cells, #size-cells)` of the parent: the encoding of this node's `reg`.
    pub parent_cells: (u32, u32),
}

impl<'a> Node<'a> {
    /// Node name with its unit address ("serial@10000000").
    pub fn name(&self) -> &'a [u8] {
        self.name
    }

    /// Whether the name is `want`, or `want` is the name without its unit address.
    fn name_matches(&self, want: &str) -> bool {
        let base = self.name.split(|&c| c == b'@').next().unwrap_or(&[]);
        self.name == want.as_bytes() || base == want.as_bytes()
    }

    /// Every property as `(name, value)`.
    pub fn props(&self) -> Props<'a> {
        Props {
            fdt: self.fdt,
            off: self.props,
        }
    }

    /// The value of property `name`.
    pub fn prop(&self, name: &str) -> Option<&'a [u8]> {
        self.props()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// A one-cell property.
    pub fn prop_u32(&self, name: &str) -> Option<u32> {
        be32(self.prop(name)?, 0)
    }

    /// A property read as big-endian cells.
    pub fn cells(&self, name: &str) -> Option<Cells<'a>> {
        self.prop(name).map(|v| Cells { bytes: v, off: 0 })
    }

    /// A string property (its first string for a list).
    pub fn prop_str(&self, name: &str) -> Option<&'a str> {
        core::str::from_utf8(cstr(self.prop(name)?)?).ok()
    }

    /// Whether `compatible` lists `compat`.
    pub fn is_compatible(&self, compat: &str) -> bool {
        self.prop("compatible")
            .is_some_and(|v| v.split(|&c| c == 0).any(|s| s == compat.as_bytes()))
    }

    /// `(#address-cells, #size-cells)` this node declares for its children.
    pub fn own_cells(&self) -> (u32, u32) {
        (
            self.prop_u32("#address-cells").unwrap_or(2),
            self.prop_u32("#size-cells").unwrap_or(1),
        )
    }

    /// The `i`-th `(address, size)` of `reg`.
    pub fn reg(&self, i: usize) -> Option<(u64, u64)> {
        let (ac, sc) = self.parent_cells;
        let mut c = self.cells("reg")?;
        for _ in 0..i {
            c.take(ac)?;
            c.take(sc)?;
        }
        Some((c.take(ac)?, c.take(sc)?))
    }
}

/// Iterator over a node's properties.
pub struct Props<'a> {
    fdt: Fdt<'a>,
    off: usize,
}

impl<'a> Iterator for Props<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.fdt.token(self.off)? {
                PROP => {
                    let len = self.fdt.token(self.off + 4)? as usize;
                    let name_off = self.fdt.token(self.off + 8)? as usize;
                    let start = self.off + 12;
                    let value = self.fdt.structs.get(start..start.checked_add(len)?)?;
                    self.off = align4(start + len);
                    return Some((self.fdt.string(name_off)?, value));
                }
                NOP => self.off += 4,
                _ => return None,
            }
        }
    }
}

/// Big-endian cells of a property, read in groups.
#[derive(Clone, Copy)]
pub struct Cells<'a> {
    bytes: &'a [u8],
    off: usize,
}

impl Cells<'_> {
    /// The next `n` cells (0..=2) as one number; 0 cells read as 0.
    pub fn take(&mut self, n: u32) -> Option<u64> {
        let mut v: u64 = 0;
        for _ in 0..n {
            v = (v << 32) | u64::from(be32(self.bytes, self.off)?);
            self.off += 4;
        }
        Some(v)
    }

    /// The next cell.
    pub fn u32(&mut self) -> Option<u32> {
        let v = be32(self.bytes, self.off)?;
        self.off += 4;
        Some(v)
    }

    /// Skips `n` cells.
    pub fn skip(&mut self, n: u32) -> Option<()> {
        let end = self.off.checked_add(4 * n as usize)?;
        (end <= self.bytes.len()).then(|| self.off = end)
    }

    /// Whether every cell has been read.
    pub fn is_empty(&self) -> bool {
        self.off >= self.bytes.len()
    }
}
