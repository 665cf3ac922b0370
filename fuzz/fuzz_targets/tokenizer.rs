//! The tokenizer on arbitrary text: never a panic, and every token is
//! non-empty, free of spaces and format characters, and (lower-cased
//! or not) made of characters of the input.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use polyhead::data::tokenizer::Tokenizer;

fuzz_target!(|text: &str| {
    for lowercase in [false, true] {
        let tokenizer = Tokenizer { lowercase };
        let tokens = tokenizer.tokens(text);
        let source: HashSet<char> = if lowercase {
            text.to_lowercase().chars().collect()
        } else {
            text.chars().collect()
        };
        let mut streamed = Vec::new();
        tokenizer.for_each_token(text, |t| streamed.push(t.to_string()));
        assert_eq!(tokens, streamed, "tokens and for_each_token disagree");
        for token in &tokens {
            assert!(!token.is_empty(), "empty token");
            assert!(
                !token.chars().any(|c| c.is_whitespace() || c == '\u{200B}'),
                "space inside token {token:?}"
            );
            assert!(
                token.chars().all(|c| source.contains(&c)),
                "token {token:?} has characters not in the input"
            );
        }
        // A text and the same text with spaces around it tokenise alike.
        assert_eq!(tokenizer.tokens(&format!(" {text} ")), tokens);
    }
});
