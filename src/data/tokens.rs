//! A table's text column as tokens: each distinct token once (the
//! lexicon), each row as indices into it. Tokenising is the slowest part of
//! reading data, so it runs on all threads, and its result is cached on
//! disk, keyed by the texts and the tokenizer settings, so that the next
//! run on the same data skips it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rayon::prelude::*;

use crate::data::table::Table;
use crate::data::tokenizer::{Tokenizer, TOKENIZER_VERSION};
use crate::fsutil::replace_file;
use crate::hash::ContentHash;

/// The tokens of one column of one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizedColumn {
    /// Each distinct token once, in order of first appearance.
    pub lexicon: Vec<String>,
    /// Lexicon indices of all rows, back to back.
    pub ids: Vec<u32>,
    /// Row `r` is `ids[offsets[r]..offsets[r + 1]]`; a missing cell is empty.
    pub offsets: Vec<usize>,
}

impl TokenizedColumn {
    pub fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn row(&self, row: usize) -> &[u32] {
        &self.ids[self.offsets[row]..self.offsets[row + 1]]
    }

    /// How often each lexicon entry occurs.
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.lexicon.len()];
        self.ids.iter().for_each(|&id| counts[id as usize] += 1);
        counts
    }
}

/// Rows per parallel piece: large enough to amortise a piece's own
/// lexicon, small enough to balance threads. Fixed, so the lexicon order
/// (and so the cache file) does not depend on the thread count.
const ROWS_PER_PIECE: usize = 2048;

/// Tokenises `column` of every row of `table` on all threads.
pub fn tokenize_column(table: &Table, column: usize, tokenizer: &Tokenizer) -> TokenizedColumn {
    let pieces: Vec<TokenizedColumn> = table
        .rows
        .par_chunks(ROWS_PER_PIECE)
        .map(|rows| {
            let mut piece = TokenizedColumn {
                offsets: vec![0],
                ..TokenizedColumn::default()
            };
            let mut index: HashMap<String, u32> = HashMap::new();
            for row in rows {
                if let Some(text) = row.cell(column) {
                    tokenizer.for_each_token(text, |token| {
                        let id = match index.get(token) {
                            Some(&id) => id,
                            None => {
                                let id = piece.lexicon.len() as u32;
                                index.insert(token.to_string(), id);
                                piece.lexicon.push(token.to_string());
                                id
                            }
                        };
                        piece.ids.push(id);
                    });
                }
                piece.offsets.push(piece.ids.len());
            }
            piece
        })
        .collect();
    merge(pieces)
}

/// Joins pieces in order, renumbering each piece's lexicon into one.
fn merge(pieces: Vec<TokenizedColumn>) -> TokenizedColumn {
    let mut all = TokenizedColumn {
        offsets: vec![0],
        ..TokenizedColumn::default()
    };
    let mut index: HashMap<String, u32> = HashMap::new();
    for piece in pieces {
        let renumbered: Vec<u32> = piece
            .lexicon
            .into_iter()
            .map(|token| {
                let next = all.lexicon.len() as u32;
                *index.entry(token).or_insert_with_key(|token| {
                    all.lexicon.push(token.clone());
                    next
                })
            })
            .collect();
        let base = all.ids.len();
        all.ids
            .extend(piece.ids.iter().map(|&id| renumbered[id as usize]));
        all.offsets
            .extend(piece.offsets[1..].iter().map(|o| o + base));
    }
    all
}

/// Where tokenised columns are kept between runs.
#[derive(Debug)]
pub struct TokenCache {
    dir: PathBuf,
    /// The first failure to store an entry, for one warning.
    write_error: std::sync::Mutex<Option<String>>,
}

/// Cache files kept; the oldest beyond this are removed after a write.
const CACHE_ENTRIES_KEPT: usize = 32;

const MAGIC: &[u8; 8] = b"PHTOKv2\n";

impl TokenCache {
    pub fn new(dir: PathBuf) -> TokenCache {
        TokenCache {
            dir,
            write_error: std::sync::Mutex::new(None),
        }
    }

    /// Why an entry could not be stored, if one could not.
    pub fn write_error(&self) -> Option<String> {
        self.write_error.lock().ok()?.clone()
    }

    /// `POLYHEAD_CACHE_DIR`, else `$XDG_CACHE_HOME/polyhead`, else
    /// `$HOME/.cache/polyhead`; none when `POLYHEAD_CACHE_DIR` is empty or
    /// no such folder can be named.
    pub fn from_env() -> Option<TokenCache> {
        let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
        let dir = match var("POLYHEAD_CACHE_DIR") {
            Some(dir) if dir.as_os_str().is_empty() => return None,
            Some(dir) => dir,
            None => var("XDG_CACHE_HOME")
                .filter(|d| d.is_absolute())
                .or_else(|| var("HOME").map(|home| home.join(".cache")))?
                .join("polyhead"),
        };
        Some(TokenCache::new(dir))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tokens of `column`: from the cache when an entry for the same
    /// texts and settings is there and intact, else tokenised and stored.
    /// The cache never fails a run: an unreadable or unwritable entry only
    /// means tokenising again. The flag tells whether the cache answered.
    pub fn tokens(
        &self,
        table: &Table,
        column: usize,
        tokenizer: &Tokenizer,
    ) -> (TokenizedColumn, bool) {
        let (key, text_bytes) = cache_key(table, column, tokenizer);
        let path = self.dir.join(format!("tokens-{key:032x}.bin"));
        if let Some(tokens) = read_entry(&path, entry_size_limit(table.rows.len(), text_bytes))
            .and_then(|bytes| decode(&bytes, key, table.rows.len()))
        {
            return (tokens, true);
        }

        let tokens = tokenize_column(table, column, tokenizer);
        let stored = if self.dir.exists() && !self.dir.is_dir() {
            Err(anyhow::anyhow!("not a folder"))
        } else {
            std::fs::create_dir_all(&self.dir)
                .map_err(anyhow::Error::from)
                .and_then(|()| replace_file(&path, &encode(&tokens, key)))
        };
        match stored {
            Ok(()) => self.prune(),
            Err(error) => {
                if let Ok(mut first) = self.write_error.lock() {
                    first.get_or_insert_with(|| format!("{}: {error:#}", self.dir.display()));
                }
            }
        }
        (tokens, false)
    }

    /// Keeps the newest [`CACHE_ENTRIES_KEPT`] entries, and removes the
    /// temporaries of writes that a killed run left an hour ago or more.
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let mut files: Vec<(SystemTime, PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(modified) = entry.metadata().and_then(|m| m.modified()).ok() else {
                continue;
            };
            if name.starts_with("tokens-") && name.ends_with(".bin") {
                files.push((modified, entry.path()));
            } else if name.starts_with(".tokens-") && modified < hour_ago {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        files.sort();
        let surplus = files.len().saturating_sub(CACHE_ENTRIES_KEPT);
        for (_, path) in &files[..surplus] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The most bytes an entry for these texts can take: a token has at least
/// one byte of text (lower-casing at most triples a byte), and costs four
/// bytes of ids plus at most its length-prefixed text in the lexicon.
fn entry_size_limit(rows: usize, text_bytes: usize) -> u64 {
    let tokens = 3 * text_bytes as u64;
    4096 + 4 * rows as u64 + tokens * (4 + 4 + 4)
}

/// An entry's bytes, if it is a regular file no larger than `limit` (a
/// link to a device or a huge file in the cache is no entry).
fn read_entry(path: &Path, limit: u64) -> Option<Vec<u8>> {
    use std::io::Read as _;

    // Checked before opening: opening a FIFO would wait for a writer.
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    let metadata = file.metadata().ok()?;
    if !metadata.is_file() || metadata.len() > limit {
        return None;
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= limit).then_some(bytes)
}

/// A hash of the column's texts (a missing cell differs from an empty one)
/// and of everything that changes how they tokenise, and the texts' bytes.
fn cache_key(table: &Table, column: usize, tokenizer: &Tokenizer) -> (u128, usize) {
    let mut hash = ContentHash::default();
    hash.update(&TOKENIZER_VERSION.to_le_bytes());
    hash.update(&[u8::from(tokenizer.lowercase)]);
    hash.update(&(table.rows.len() as u64).to_le_bytes());
    let mut text_bytes = 0;
    for row in &table.rows {
        match row.cell(column) {
            Some(text) => {
                hash.update(&(text.len() as u64).to_le_bytes());
                hash.update(text.as_bytes());
                text_bytes += text.len();
            }
            None => hash.update(&u64::MAX.to_le_bytes()),
        }
    }
    (hash.value(), text_bytes)
}

/// The cache file: magic, key, counts, lexicon (length-prefixed UTF-8),
/// row lengths, ids, then a hash of everything before it. Little-endian.
fn encode(tokens: &TokenizedColumn, key: u128) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + tokens.ids.len() * 4 + tokens.lexicon.len() * 12);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key.to_le_bytes());
    for n in [tokens.lexicon.len() as u64, tokens.rows() as u64] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    for token in &tokens.lexicon {
        out.extend_from_slice(&(token.len() as u32).to_le_bytes());
        out.extend_from_slice(token.as_bytes());
    }
    for row in 0..tokens.rows() {
        out.extend_from_slice(&(tokens.row(row).len() as u32).to_le_bytes());
    }
    for id in &tokens.ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    let mut hash = ContentHash::default();
    hash.update(&out);
    out.extend_from_slice(&hash.value().to_le_bytes());
    out
}

/// Reads a cache file back; `None` for anything but an intact entry for
/// this key and row count.
fn decode(bytes: &[u8], key: u128, rows: usize) -> Option<TokenizedColumn> {
    let (body, stored_hash) = bytes.split_at_checked(bytes.len().checked_sub(16)?)?;
    let mut hash = ContentHash::default();
    hash.update(body);
    if hash.value() != u128::from_le_bytes(stored_hash.try_into().ok()?) {
        return None;
    }

    let mut reader = Reader { bytes: body };
    if reader.take(MAGIC.len())? != MAGIC || reader.take(16)? != key.to_le_bytes() {
        return None;
    }
    let lexicon_len = usize::try_from(reader.u64()?).ok()?;
    if usize::try_from(reader.u64()?).ok()? != rows {
        return None;
    }
    let mut lexicon = Vec::with_capacity(lexicon_len.min(body.len()));
    for _ in 0..lexicon_len {
        let len = reader.u32()? as usize;
        lexicon.push(std::str::from_utf8(reader.take(len)?).ok()?.to_string());
    }
    let mut offsets = Vec::with_capacity(rows + 1);
    offsets.push(0usize);
    for _ in 0..rows {
        let next = offsets[offsets.len() - 1].checked_add(reader.u32()? as usize)?;
        offsets.push(next);
    }
    let total = offsets[rows];
    if reader.bytes.len() != total.checked_mul(4)? {
        return None;
    }
    let ids: Vec<u32> = reader
        .bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if ids.iter().any(|&id| id as usize >= lexicon.len()) {
        return None;
    }
    Some(TokenizedColumn {
        lexicon,
        ids,
        offsets,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.bytes.split_at_checked(n)?;
        self.bytes = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::table::{read_table_from, Format};

    fn table(text: &str) -> Table {
        read_table_from(text.as_bytes(), "t.tsv", Format::Tsv).unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("polyhead-tokens-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Many rows (several pieces) with repeated and fresh words.
    fn big_table() -> Table {
        let mut text = String::from("text\ttopic\n");
        for i in 0..5000 {
            text.push_str(&format!(
                "Word{} shared word{} déjà-vu {}!\tx\n",
                i % 7,
                i % 300,
                i
            ));
        }
        table(&text)
    }

    /// A cache in `dir` holding the entry of [`big_table`]: the cache, the
    /// table, its tokens and the entry's path.
    fn one_entry(dir: &Path) -> (TokenCache, Table, TokenizedColumn, PathBuf) {
        let cache = TokenCache::new(dir.to_path_buf());
        let table = big_table();
        let (expected, _) = cache.tokens(&table, 0, &Tokenizer::default());
        let entry = std::fs::read_dir(dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        (cache, table, expected, entry)
    }

    #[test]
    fn matches_the_tokenizer_row_by_row() {
        let table = big_table();
        let tokenizer = Tokenizer::default();
        let tokens = tokenize_column(&table, 0, &tokenizer);
        assert_eq!(tokens.rows(), table.rows.len());
        for (r, row) in table.rows.iter().enumerate() {
            let expected = tokenizer.tokens(row.cell(0).unwrap());
            let got: Vec<&str> = tokens
                .row(r)
                .iter()
                .map(|&id| tokens.lexicon[id as usize].as_str())
                .collect();
            assert_eq!(got, expected, "row {r}");
        }
        let mut distinct = tokens.lexicon.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            tokens.lexicon.len(),
            "a token twice in the lexicon"
        );
    }

    #[test]
    fn missing_and_empty_cells_have_no_tokens() {
        let table = table("text\ttopic\n\tx\n   \ty\nsome words\tz\n");
        let tokens = tokenize_column(&table, 0, &Tokenizer::default());
        assert_eq!(tokens.offsets, [0, 0, 0, 2]);
        assert_eq!(tokens.counts(), [1, 1]);
    }

    #[test]
    fn cache_answers_the_second_time_with_the_same_tokens() {
        let dir = scratch("roundtrip");
        let cache = TokenCache::new(dir.clone());
        let table = big_table();
        let tokenizer = Tokenizer::default();
        let (first, hit) = cache.tokens(&table, 0, &tokenizer);
        assert!(!hit);
        let (second, hit) = cache.tokens(&table, 0, &tokenizer);
        assert!(hit);
        assert_eq!(first, second);

        // Other settings or other texts are other entries.
        let cased = Tokenizer { lowercase: false };
        assert!(!cache.tokens(&table, 0, &cased).1);
        let mut changed = table.clone();
        changed.rows.pop();
        assert!(!cache.tokens(&changed, 0, &tokenizer).1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Texts that differ only in bytes 7 and 15 (the top bytes of two
    /// 8-byte words), which a weaker word-at-a-time key once confused.
    #[test]
    fn texts_differing_in_word_top_bytes_are_other_entries() {
        let dir = scratch("top-bytes");
        let cache = TokenCache::new(dir.clone());
        let tokenizer = Tokenizer::default();
        let first = table("text\ttopic\nmy cat bat is very happy\tx\nmy dog cog is sad\ty\n");
        let second = table("text\ttopic\nmy cat dat is very happy\tx\nmy dog aog is sad\ty\n");
        let (_, hit) = cache.tokens(&first, 0, &tokenizer);
        assert!(!hit);
        let (tokens, hit) = cache.tokens(&second, 0, &tokenizer);
        assert!(!hit, "another table's tokens were served");
        assert!(tokens.lexicon.contains(&"dat".to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_entry_is_tokenised_again() {
        let dir = scratch("damaged");
        let (cache, table, expected, entry) = one_entry(&dir);
        let tokenizer = Tokenizer::default();
        let mut bytes = std::fs::read(&entry).unwrap();
        for cut in [0, 7, 8, 30, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&entry, &bytes[..cut]).unwrap();
            let (tokens, hit) = cache.tokens(&table, 0, &tokenizer);
            assert!(!hit, "a file cut at {cut} was used");
            assert_eq!(tokens, expected);
        }
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        std::fs::write(&entry, &bytes).unwrap();
        let (tokens, hit) = cache.tokens(&table, 0, &tokenizer);
        assert!(!hit, "a flipped bit was not noticed");
        assert_eq!(tokens, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn entry_that_is_a_device_or_too_large_is_not_read() {
        let dir = scratch("oversized");
        let (cache, table, expected, entry) = one_entry(&dir);
        let tokenizer = Tokenizer::default();

        // A link to an endless device: reading it whole would never end.
        std::fs::remove_file(&entry).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &entry).unwrap();
        let (tokens, hit) = cache.tokens(&table, 0, &tokenizer);
        assert!(!hit);
        assert_eq!(tokens, expected);

        // A FIFO: opening it would wait for a writer forever.
        std::fs::remove_file(&entry).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&entry)
            .status()
            .unwrap();
        assert!(made.success());
        let (tokens, hit) = cache.tokens(&table, 0, &tokenizer);
        assert!(!hit);
        assert_eq!(tokens, expected);

        // A sparse file far larger than any entry for these texts.
        std::fs::remove_file(&entry).unwrap();
        let file = std::fs::File::create(&entry).unwrap();
        file.set_len(1 << 32).unwrap();
        let (tokens, hit) = cache.tokens(&table, 0, &tokenizer);
        assert!(!hit);
        assert_eq!(tokens, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_cache_still_tokenises() {
        let dir = scratch("unwritable");
        std::fs::write(&dir, b"a file where the folder should be").unwrap();
        let table = big_table();
        let cache = TokenCache::new(dir.clone());
        let (tokens, hit) = cache.tokens(&table, 0, &Tokenizer::default());
        assert!(!hit);
        assert!(cache.write_error().is_some());
        assert_eq!(tokens.rows(), table.rows.len());
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn keeps_only_the_newest_entries() {
        let dir = scratch("prune");
        let cache = TokenCache::new(dir.clone());
        for i in 0..CACHE_ENTRIES_KEPT + 3 {
            let table = table(&format!("text\ttopic\nrow {i}\tx\n"));
            cache.tokens(&table, 0, &Tokenizer::default());
        }
        let entries = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(entries, CACHE_ENTRIES_KEPT);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
