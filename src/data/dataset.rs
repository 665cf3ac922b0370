//! Tokenised examples.

/// Texts as token ids with their labels.
#[derive(Clone, Debug, Default)]
pub struct Encoded {
    pub tokens: Vec<i32>,
    pub offsets: Vec<usize>,
    pub labels: Vec<Vec<i32>>,
    pub lines: Vec<usize>,
    pub empty: Vec<bool>,
    pub all_oov: Vec<bool>,
}

impl Encoded {
    pub fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn text(&self, row: usize) -> &[i32] {
        &self.tokens[self.offsets[row]..self.offsets[row + 1]]
    }
}
