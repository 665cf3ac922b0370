//! The vocabulary: `<pad>` = 0, `<unk>` = 1, then the training words, most
//! frequent first, ties broken by byte-wise (UTF-8) order, so the same data
//! gives the same ids on every run and every thread count.

use std::collections::{HashMap, HashSet};

use crate::data::table::{DataError, Table};
use crate::data::tokenizer::Tokenizer;
use crate::data::tokens::{tokenize_column, TokenizedColumn};

pub const PAD: i32 = 0;
pub const UNK: i32 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    words: Vec<String>,
    ids: HashMap<String, i32>,
}

impl Vocab {
    /// Counts the tokens of `text_column` in `tables` and keeps words seen
    /// at least `min_count` times, at most `max_words` of them.
    pub fn build(
        tables: &[&Table],
        text_column: &str,
        tokenizer: &Tokenizer,
        min_count: usize,
        max_words: usize,
    ) -> Result<Vocab, DataError> {
        let mut columns = Vec::with_capacity(tables.len());
        for table in tables {
            let column = column_index(table, text_column)?;
            columns.push(tokenize_column(table, column, tokenizer));
        }
        let columns: Vec<&TokenizedColumn> = columns.iter().collect();
        Ok(Vocab::from_tokens(&columns, min_count, max_words))
    }

    /// [`Vocab::build`] from columns already tokenised.
    pub fn from_tokens(columns: &[&TokenizedColumn], min_count: usize, max_words: usize) -> Vocab {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for column in columns {
            for (token, n) in column.lexicon.iter().zip(column.counts()) {
                match counts.get_mut(token) {
                    Some(total) => *total += n,
                    None => {
                        counts.insert(token.clone(), n);
                    }
                }
            }
        }
        Vocab::from_counts(counts, min_count, max_words)
    }

    pub fn from_counts(
        counts: HashMap<String, usize>,
        min_count: usize,
        max_words: usize,
    ) -> Vocab {
        let mut kept: Vec<(String, usize)> = counts
            .into_iter()
            .filter(|(_, n)| *n >= min_count.max(1))
            .collect();
        kept.sort_unstable_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
        });
        kept.truncate(max_words);
        let words = ["<pad>".to_string(), "<unk>".to_string()]
            .into_iter()
            .chain(kept.into_iter().map(|(w, _)| w))
            .collect();
        Vocab::from_words(words).expect("built words are distinct")
    }

    /// The vocabulary stored in a model file; the specials must come first
    /// and no word may repeat.
    pub fn from_words(words: Vec<String>) -> Result<Vocab, String> {
        check_words(&words)?;
        let ids = words
            .iter()
            .enumerate()
            .skip(2)
            .map(|(i, w)| (w.clone(), i as i32))
            .collect();
        Ok(Vocab { words, ids })
    }

    /// The id of `word`, [`UNK`] when unknown.
    pub fn id(&self, word: &str) -> i32 {
        self.ids.get(word).copied().unwrap_or(UNK)
    }

    /// All entries, the two specials first; index = id.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.len() <= 2
    }
}

/// Checks a stored vocabulary: the specials first, no word twice.
pub fn check_words(words: &[String]) -> Result<(), String> {
    if words.len() < 2 || words[0] != "<pad>" || words[1] != "<unk>" {
        return Err("the vocabulary must start with \"<pad>\", \"<unk>\"".to_string());
    }
    let mut seen = HashSet::with_capacity(words.len());
    if let Some(w) = words.iter().find(|w| !seen.insert(w.as_str())) {
        return Err(format!("word {w:?} appears twice in the vocabulary"));
    }
    Ok(())
}

/// The index of `name` among the table's columns, or an error naming the
/// file, the column and the columns it has.
pub fn column_index(table: &Table, name: &str) -> Result<usize, DataError> {
    table.columns.iter().position(|c| c == name).ok_or_else(|| {
        let msg = format!(
            "no column {name:?} (columns: {})",
            column_list(&table.columns)
        );
        DataError::new(&table.source, None, msg)
    })
}

/// The column names for a message: all of them, or the first few of a
/// header too wide to print on one line.
pub fn column_list(columns: &[String]) -> String {
    const SHOWN: usize = 20;
    // Columns set aside for a run are renamed `\0unused:NAME` internally.
    let names: Vec<&str> = columns
        .iter()
        .map(|c| c.strip_prefix("\0unused:").unwrap_or(c))
        .collect();
    if names.len() <= SHOWN {
        return names.join(", ");
    }
    format!(
        "{}, ... ({} in all)",
        names[..SHOWN].join(", "),
        names.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequency_order_ties_by_bytes_and_cap() {
        let counts = [
            ("goal", 4),
            ("team", 3),
            ("vote", 3),
            ("chip", 2),
            ("rain", 2),
            ("zebra", 1),
        ]
        .into_iter()
        .map(|(w, n)| (w.to_string(), n))
        .collect();
        let vocab = Vocab::from_counts(counts, 1, 4);
        assert_eq!(
            vocab.words(),
            ["<pad>", "<unk>", "goal", "team", "vote", "chip"]
        );
        assert_eq!(vocab.id("rain"), UNK);
        assert_eq!(vocab.id("goal"), 2);
    }

    #[test]
    fn min_count_drops_rare_words() {
        let counts = [("a", 1), ("b", 2), ("c", 2)]
            .into_iter()
            .map(|(w, n)| (w.to_string(), n))
            .collect();
        assert_eq!(
            Vocab::from_counts(counts, 2, 100).words(),
            ["<pad>", "<unk>", "b", "c"]
        );
    }

    #[test]
    fn stored_vocabularies_are_checked() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(Vocab::from_words(words(&["<unk>", "<pad>"])).is_err());
        let err = Vocab::from_words(words(&["<pad>", "<unk>", "a", "a"])).unwrap_err();
        assert!(err.contains("\"a\" appears twice"), "{err}");
    }
}
