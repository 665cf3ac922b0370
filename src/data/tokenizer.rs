//! The tokenizer: Unicode-aware, and defined by a short rule over general
//! categories so that other runtimes can reproduce it exactly (the PyTorch
//! export does, with Python's standard `unicodedata`).
//!
//! The rule (version 1):
//! 1. With `lowercase`, the text is lower-cased (full Unicode mapping).
//! 2. Each character is classified:
//!    - format characters (category `Cf`, e.g. zero-width joiners, soft
//!      hyphens) are dropped;
//!    - separators (`Zs`, `Zl`, `Zp`) and control characters (`Cc`: tab,
//!      CR, LF, ...) are spaces;
//!    - characters of scripts written without spaces between words (CJK
//!      ideographs, kana, hangul, Thai, Lao, Myanmar, Khmer; see
//!      [`is_solo`]) are tokens on their own;
//!    - letters, marks, numbers and connector punctuation (`L*`, `M*`,
//!      `N*`, `Pc`) are word characters;
//!    - anything else (punctuation, symbols, emoji) is a token on its own.
//! 3. A token is a maximal run of word characters, where an apostrophe
//!    (`'` or `’`) between two word characters and a `.` or `,` between two
//!    decimal digits stay inside the run ("don't", "3.5", "1,000").
//!
//! So "Don't panic!!" gives `don't`, `panic`, `!`, `!`, and Chinese text
//! trains without any preprocessing: every ideograph is a token.
//!
//! Category tables follow the Unicode version of the `unicode-properties`
//! crate; runtimes on an older Unicode version may classify characters
//! assigned since differently.

use serde::{Deserialize, Serialize};
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// Version of the rule above, recorded in exports and token caches.
pub const TOKENIZER_VERSION: u32 = 1;

/// Tokenizer settings, stored in the model file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokenizer {
    pub lowercase: bool,
}

impl Default for Tokenizer {
    fn default() -> Tokenizer {
        Tokenizer { lowercase: true }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Dropped,
    Space,
    Solo,
    Word,
    Other,
}

fn classify(c: char) -> Class {
    // Most text is ASCII, whose categories are simple: letters and digits
    // (`L*`, `Nd`) and `_` (`Pc`) are word characters, blanks and controls
    // (`Zs`, `Cc`) are spaces, the rest is punctuation or symbols.
    if c.is_ascii() {
        return match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' => Class::Word,
            ' ' | '\0'..='\x1f' | '\x7f' => Class::Space,
            _ => Class::Other,
        };
    }
    classify_by_category(c)
}

fn classify_by_category(c: char) -> Class {
    let category = c.general_category();
    match category {
        GeneralCategory::Format => return Class::Dropped,
        GeneralCategory::SpaceSeparator
        | GeneralCategory::LineSeparator
        | GeneralCategory::ParagraphSeparator
        | GeneralCategory::Control => return Class::Space,
        _ => {}
    }
    if is_solo(c) {
        return Class::Solo;
    }
    match c.general_category_group() {
        GeneralCategoryGroup::Letter
        | GeneralCategoryGroup::Mark
        | GeneralCategoryGroup::Number => Class::Word,
        _ if category == GeneralCategory::ConnectorPunctuation => Class::Word,
        _ => Class::Other,
    }
}

/// Characters of scripts written without spaces between words.
pub fn is_solo(c: char) -> bool {
    matches!(
        c as u32,
        0x0E00..=0x0EFF     // Thai, Lao
        | 0x1000..=0x109F   // Myanmar
        | 0x1100..=0x11FF   // Hangul Jamo
        | 0x1780..=0x17FF   // Khmer
        | 0x19E0..=0x19FF   // Khmer symbols
        | 0x2E80..=0x2FDF   // CJK radicals, Kangxi radicals
        | 0x3005..=0x3007   // ideographic iteration mark, closing mark, zero
        | 0x3021..=0x3029   // Hangzhou numerals
        | 0x3038..=0x303B
        | 0x3040..=0x30FF   // Hiragana, Katakana
        | 0x3130..=0x318F   // Hangul compatibility Jamo
        | 0x31F0..=0x31FF   // Katakana phonetic extensions
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xA960..=0xA97F   // Hangul Jamo extended A
        | 0xAC00..=0xD7FF   // Hangul syllables, Jamo extended B
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0xFF66..=0xFF9F   // half-width Katakana
        | 0x20000..=0x3FFFF // CJK extensions B and later
    )
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

fn is_digit(c: char) -> bool {
    c.general_category() == GeneralCategory::DecimalNumber
}

impl Tokenizer {
    /// The tokens of `text`, in order.
    pub fn tokens(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.for_each_token(text, |t| out.push(t.to_string()));
        out
    }

    /// Calls `emit` with each token of `text`, without allocating per token
    /// beyond one reused buffer.
    pub fn for_each_token(&self, text: &str, mut emit: impl FnMut(&str)) {
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let chars: Vec<(char, Class)> = text
            .chars()
            .map(|c| (c, classify(c)))
            .filter(|&(_, class)| class != Class::Dropped)
            .collect();

        let mut word = String::new();
        for (i, &(c, class)) in chars.iter().enumerate() {
            let joins = match class {
                Class::Word => true,
                Class::Other if !word.is_empty() => {
                    let prev = chars[i - 1].0;
                    let next = chars.get(i + 1).copied();
                    let next_is_word = next.is_some_and(|(_, k)| k == Class::Word);
                    (is_apostrophe(c) && next_is_word)
                        || ((c == '.' || c == ',')
                            && is_digit(prev)
                            && next.is_some_and(|(n, _)| is_digit(n)))
                }
                _ => false,
            };
            if joins {
                word.push(c);
                continue;
            }
            if !word.is_empty() {
                emit(&word);
                word.clear();
            }
            if matches!(class, Class::Solo | Class::Other) {
                let mut buf = [0u8; 4];
                emit(c.encode_utf8(&mut buf));
            }
        }
        if !word.is_empty() {
            emit(&word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_shortcut_agrees_with_the_categories() {
        for c in (0u8..=0x7f).map(char::from) {
            assert_eq!(classify(c), classify_by_category(c), "{c:?}");
        }
    }

    fn tokens(text: &str) -> Vec<String> {
        Tokenizer::default().tokens(text)
    }

    #[test]
    fn english_words_punctuation_and_contractions() {
        assert_eq!(tokens("Don't panic!!"), ["don't", "panic", "!", "!"]);
        assert_eq!(
            tokens("3.5 stars, 1,000 times"),
            ["3.5", "stars", ",", "1,000", "times"]
        );
        assert_eq!(tokens("end. Start"), ["end", ".", "start"]);
        assert_eq!(tokens("rock 'n' roll"), ["rock", "'", "n", "'", "roll"]);
        assert_eq!(tokens("snake_case"), ["snake_case"]);
        assert_eq!(tokens("a\tb\r\nc"), ["a", "b", "c"]);
    }

    #[test]
    fn scripts_without_spaces_are_split_per_character() {
        assert_eq!(tokens("我爱北京"), ["我", "爱", "北", "京"]);
        assert_eq!(tokens("東京タワー"), ["東", "京", "タ", "ワ", "ー"]);
        assert_eq!(
            tokens("한국어 텍스트"),
            ["한", "국", "어", "텍", "스", "트"]
        );
        assert_eq!(tokens("ภาษาไทย").len(), 7);
        assert_eq!(tokens("iPhone很好用"), ["iphone", "很", "好", "用"]);
    }

    #[test]
    fn emoji_accents_and_format_characters() {
        assert_eq!(tokens("café ☕"), ["café", "☕"]);
        assert_eq!(tokens("CAFÉ"), ["café"]);
        assert_eq!(tokens("soft\u{00AD}ware"), ["software"]);
        assert_eq!(tokens("👍🏽"), ["👍", "🏽"]);
    }

    #[test]
    fn empty_and_blank_texts_have_no_tokens() {
        assert!(tokens("").is_empty());
        assert!(tokens("   \t\r\n").is_empty());
        assert!(tokens("\u{200B}\u{FEFF}").is_empty());
    }

    #[test]
    fn case_kept_when_asked() {
        let t = Tokenizer { lowercase: false };
        assert_eq!(t.tokens("Hello World"), ["Hello", "World"]);
    }
}
