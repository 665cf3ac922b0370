//! What every table read without error must satisfy, whatever the bytes.

use polyhead::data::table::{read_table_from, Format, Table, MAX_LINE_BYTES};

/// Reads `bytes` as `format`; on success checks the table's invariants,
/// on failure that the error names the source and fits on one line.
pub fn check(bytes: &[u8], format: Format) {
    match read_table_from(bytes, "fuzz-input", format) {
        Ok(table) => check_table(&table),
        Err(e) => {
            let text = e.to_string();
            assert!(text.starts_with("fuzz-input"), "error without source: {text}");
            assert!(!text.contains('\n'), "error on several lines: {text:?}");
        }
    }
}

fn check_table(table: &Table) {
    assert!(!table.columns.is_empty(), "a table without columns");
    let mut names: Vec<&String> = table.columns.iter().collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), table.columns.len(), "duplicate column names");
    assert!(table.columns.iter().all(|c| !c.is_empty()), "empty column name");

    let mut last_line = 0;
    for row in &table.rows {
        assert!(row.line > last_line, "records out of order");
        last_line = row.line;
        let mut last_column = None;
        for (column, value) in row.values() {
            assert!(column < table.columns.len(), "cell past the header");
            assert!(last_column < Some(column), "cells out of order");
            last_column = Some(column);
            assert!(!value.trim().is_empty(), "a blank cell kept as a value");
            assert!(value.len() <= MAX_LINE_BYTES, "cell longer than the cap");
            assert!(!value.contains('\0'), "NUL byte in a cell");
            assert!(!value.starts_with('\u{FEFF}') || column > 0, "BOM kept");
            assert_eq!(row.cell(column), Some(value), "cell lookup disagrees");
        }
    }
}
