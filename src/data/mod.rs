//! Reading labelled tables, tokenising, vocabulary and batching.
