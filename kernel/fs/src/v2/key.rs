//! Tree keys: `(id, kind, offset)`, ordered in that order, 17 bytes on disk.

/// Bytes of an encoded key.
pub const KEY_SIZE: usize = 17;

/// Item kinds of the filesystem layer (`docs/tinyfs-format.md`, version 2). The tree itself
/// orders keys by kind and gives kinds no meaning.
pub mod kind {
    /// An inode: `(ino, INODE, 0)`.
    pub const INODE: u8 = 1;
    /// A directory entry: `(dir, DIRENT, hash48(name) << 16 | n)`.
    pub const DIRENT: u8 = 2;
    /// An inode's back reference to its directory entry: `(ino, PARENT, dir)`.
    pub const PARENT: u8 = 3;
    /// A file extent: `(ino, EXTENT, first file block)`.
    pub const EXTENT: u8 = 4;
    /// Data checksums: `(ino, CSUM, first file block)`.
    pub const CSUM: u8 = 5;
    /// An unlinked inode still being freed: `(ORPHANS_ID, ORPHAN, ino)`.
    pub const ORPHAN: u8 = 7;
}

/// A tree key. Keys compare by `id`, then `kind`, then `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key {
    /// The object the item belongs to (an inode number, or a reserved id).
    pub id: u64,
    /// What the item is (see [`kind`]).
    pub kind: u8,
    /// Position among the object's items of this kind.
    pub offset: u64,
}

impl Key {
    /// The smallest key.
    pub const MIN: Key = Key {
        id: 0,
        kind: 0,
        offset: 0,
    };
    /// The largest key.
    pub const MAX: Key = Key {
        id: u64::MAX,
        kind: u8::MAX,
        offset: u64::MAX,
    };

    /// A key.
    pub const fn new(id: u64, kind: u8, offset: u64) -> Key {
        Key { id, kind, offset }
    }

    /// The 17-byte encoding: `id` (LE), `kind`, `offset` (LE).
    pub fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.id.to_le_bytes());
        out[8] = self.kind;
        out[9..17].copy_from_slice(&self.offset.to_le_bytes());
    }

    /// Decodes the first 17 bytes of `b`.
    pub fn decode(b: &[u8]) -> Key {
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[..8]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[9..17]);
        Key {
            id: u64::from_le_bytes(id),
            kind: b[8],
            offset: u64::from_le_bytes(off),
        }
    }

    /// The next key in order, or `None` after [`Key::MAX`].
    pub fn successor(&self) -> Option<Key> {
        if let Some(offset) = self.offset.checked_add(1) {
            return Some(Key { offset, ..*self });
        }
        if let Some(kind) = self.kind.checked_add(1) {
            return Some(Key {
                kind,
                offset: 0,
                id: self.id,
            });
        }
        self.id.checked_add(1).map(|id| Key::new(id, 0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_order_is_field_order() {
        let k = Key::new(0x0102_0304_0506_0708, 9, u64::MAX - 3);
        let mut b = [0u8; KEY_SIZE];
        k.encode(&mut b);
        assert_eq!(b[0], 8);
        assert_eq!(b[8], 9);
        assert_eq!(Key::decode(&b), k);
        assert!(Key::new(1, 0, 5) < Key::new(1, 1, 0));
        assert!(Key::new(1, 9, u64::MAX) < Key::new(2, 0, 0));
        assert_eq!(
            Key::new(1, 2, u64::MAX).successor(),
            Some(Key::new(1, 3, 0))
        );
        assert_eq!(
            Key::new(1, u8::MAX, u64::MAX).successor(),
            Some(Key::new(2, 0, 0))
        );
        assert_eq!(Key::MAX.successor(), None);
    }
}
