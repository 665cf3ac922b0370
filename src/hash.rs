//! Content hashes for checksums and cache keys: XXH3 with 128 bits, where
//! every input bit affects every output bit, so distinct content collides
//! only by chance (about 2^-128), never by the shape of a change.

use xxhash_rust::xxh3::Xxh3;

/// A streaming 128-bit hash.
#[derive(Clone, Default)]
pub struct ContentHash(Xxh3);

impl ContentHash {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn value(&self) -> u128 {
        self.0.digest128()
    }

    /// The hash as 32 hexadecimal digits.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.value())
    }
}

/// The hash of `parts` one after the other, as 32 hexadecimal digits.
pub fn hex_of(parts: &[&[u8]]) -> String {
    let mut hash = ContentHash::default();
    parts.iter().for_each(|p| hash.update(p));
    hash.hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changes confined to the top bits of 8-byte words, which a
    /// word-at-a-time multiplicative hash cannot see below its own top bits,
    /// change every hash here.
    #[test]
    fn top_bit_changes_are_seen() {
        let base = vec![0u8; 64];
        let reference = hex_of(&[&base]);
        for (a, b) in [(7, 15), (15, 31), (7, 63)] {
            let mut changed = base.clone();
            changed[a] ^= 0x80;
            changed[b] ^= 0x80;
            assert_ne!(hex_of(&[&changed]), reference, "bytes {a} and {b}");
        }
        let mut streamed = ContentHash::default();
        streamed.update(&base[..10]);
        streamed.update(&base[10..]);
        assert_eq!(streamed.hex(), reference);
    }
}
