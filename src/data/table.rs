//! Reading labelled tables: TSV, CSV (RFC 4180) and JSON Lines.
//!
//! Whatever the format, a table is a header of column names and records of
//! optional cells: an empty cell, a cell of only whitespace, a JSON `null`
//! and an absent JSON key all mean "missing". Input may start with a UTF-8
//! byte-order mark and use LF or CRLF line ends; neither survives into a
//! cell. Every error names the source, the line and, where it helps, the
//! column.

use std::collections::HashSet;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Longest line (or CSV record) accepted: a guard against reading a wrong,
/// huge file into memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Tab-separated, no quoting: a `"` is an ordinary character.
    Tsv,
    /// RFC 4180: quoted fields may hold commas, doubled quotes and newlines.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// The format a file extension stands for.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
        match ext.as_str() {
            "tsv" | "tab" => Some(Format::Tsv),
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// A table as read: column names and records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// The file path, or a name such as `<stdin>`.
    pub source: String,
    pub columns: Vec<String>,
    pub rows: Vec<Record>,
    /// Cells that held only whitespace (read as missing).
    pub blank_cells: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// 1-based line where the record starts.
    pub line: usize,
    /// One cell per column; `None` is a missing value.
    pub cells: Vec<Option<String>>,
}

/// A problem with the input, located as precisely as the format allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError {
    pub source: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for DataError {}

impl DataError {
    pub fn new(source: &str, line: Option<usize>, message: impl Into<String>) -> DataError {
        DataError {
            source: source.to_string(),
            line,
            column: None,
            message: message.into(),
        }
    }
}

/// Reads the table at `path`; the format comes from `format` or else the
/// extension.
pub fn read_table(path: &Path, format: Option<Format>) -> Result<Table, DataError> {
    let source = path.display().to_string();
    let format = match format.or_else(|| Format::from_path(path)) {
        Some(f) => f,
        None => {
            let msg = "unknown table format: name it .tsv, .csv or .jsonl, or pass --format";
            return Err(DataError::new(&source, None, msg));
        }
    };
    let file = std::fs::File::open(path)
        .map_err(|e| DataError::new(&source, None, format!("cannot open: {e}")))?;
    read_table_from(file, &source, format)
}

/// Reads a table of `format` from `reader`; `source` names it in errors.
pub fn read_table_from<R: Read>(
    reader: R,
    source: &str,
    format: Format,
) -> Result<Table, DataError> {
    let mut reader = BufReader::new(reader);
    skip_bom(&mut reader, source)?;
    let table = match format {
        Format::Tsv => read_tsv(reader, source)?,
        Format::Csv => read_csv(reader, source)?,
        Format::Jsonl => read_jsonl(reader, source)?,
    };
    check_header(&table)?;
    Ok(table)
}

fn skip_bom<R: Read>(reader: &mut BufReader<R>, source: &str) -> Result<(), DataError> {
    let head = reader
        .fill_buf()
        .map_err(|e| DataError::new(source, None, format!("cannot read: {e}")))?;
    if head.starts_with(b"\xEF\xBB\xBF") {
        reader.consume(3);
    }
    Ok(())
}

fn check_header(table: &Table) -> Result<(), DataError> {
    if table.columns.is_empty() {
        return Err(DataError::new(
            &table.source,
            None,
            "empty file: no header row",
        ));
    }
    let mut seen = HashSet::new();
    for name in &table.columns {
        if !seen.insert(name) {
            let msg = format!("column {name:?} appears twice in the header");
            return Err(DataError::new(&table.source, Some(1), msg));
        }
    }
    Ok(())
}

/// A cell's value: `None` when empty or whitespace only.
fn cell(raw: &str) -> Option<String> {
    if raw.trim().is_empty() {
        None
    } else {
        Some(raw.to_string())
    }
}

/// Counts the cells of `rows` that held only whitespace.
fn count_blank<'a>(raw: impl Iterator<Item = &'a str>) -> usize {
    raw.filter(|c| !c.is_empty() && c.trim().is_empty()).count()
}

/// Physical lines as UTF-8 strings without their line end, with a size cap.
fn lines<'a, R: BufRead + 'a>(
    mut reader: R,
    source: &'a str,
) -> impl Iterator<Item = Result<(usize, String), DataError>> + 'a {
    let mut number = 0;
    let mut buf = Vec::new();
    std::iter::from_fn(move || {
        buf.clear();
        number += 1;
        let mut limited = (&mut reader).take(MAX_LINE_BYTES as u64 + 1);
        match limited.read_until(b'\n', &mut buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => {
                return Some(Err(DataError::new(
                    source,
                    Some(number),
                    format!("cannot read: {e}"),
                )))
            }
        }
        if buf.len() > MAX_LINE_BYTES && !buf.ends_with(b"\n") {
            let msg = format!("line longer than {} MiB", MAX_LINE_BYTES >> 20);
            return Some(Err(DataError::new(source, Some(number), msg)));
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        Some(match std::str::from_utf8(&buf) {
            Ok(text) => Ok((number, text.to_string())),
            Err(e) => {
                let col = text_column(&buf[..e.valid_up_to()]);
                Err(DataError {
                    source: source.to_string(),
                    line: Some(number),
                    column: Some(col),
                    message: "invalid UTF-8".to_string(),
                })
            }
        })
    })
}

/// 1-based character column just after `valid` bytes of UTF-8.
fn text_column(valid: &[u8]) -> usize {
    std::str::from_utf8(valid).map_or(1, |s| s.chars().count() + 1)
}

fn fit_row(
    source: &str,
    line: usize,
    columns: usize,
    fields: Vec<Option<String>>,
) -> Result<Vec<Option<String>>, DataError> {
    if fields.len() > columns {
        let msg = format!("row has {} fields, the header has {columns}", fields.len());
        return Err(DataError::new(source, Some(line), msg));
    }
    let mut fields = fields;
    fields.resize(columns, None);
    Ok(fields)
}

fn read_tsv<R: BufRead>(reader: R, source: &str) -> Result<Table, DataError> {
    let mut lines = lines(reader, source);
    let columns = loop {
        match lines.next().transpose()? {
            None => {
                return Ok(Table {
                    source: source.to_string(),
                    columns: Vec::new(),
                    rows: Vec::new(),
                    blank_cells: 0,
                })
            }
            Some((_, header)) if header.trim().is_empty() => continue,
            Some((_, header)) => {
                break header
                    .split('\t')
                    .map(|c| c.trim().to_string())
                    .collect::<Vec<_>>()
            }
        }
    };
    let (mut rows, mut blank_cells) = (Vec::new(), 0);
    for item in lines {
        let (line, text) = item?;
        if text.trim().is_empty() {
            continue;
        }
        blank_cells += count_blank(text.split('\t').skip(1));
        let fields = text.split('\t').map(cell).collect();
        rows.push(Record {
            line,
            cells: fit_row(source, line, columns.len(), fields)?,
        });
    }
    Ok(Table {
        source: source.to_string(),
        columns,
        rows,
        blank_cells,
    })
}

fn read_csv<R: BufRead>(mut reader: R, source: &str) -> Result<Table, DataError> {
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::new(source, None, format!("cannot read: {e}")))?;
    if let Some(line) = unclosed_quote(&bytes) {
        let msg = "a quoted field opened here is never closed";
        return Err(DataError::new(source, Some(line), msg));
    }

    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let mut record = csv::ByteRecord::new();
    let mut columns: Vec<String> = Vec::new();
    let (mut rows, mut blank_cells) = (Vec::new(), 0);
    loop {
        let start_line = csv.position().line() as usize;
        match csv.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(source, start_line, e)),
        }
        let line = record.position().map_or(start_line, |p| p.line() as usize);
        if record.as_slice().len() > MAX_LINE_BYTES {
            let msg = format!("record longer than {} MiB", MAX_LINE_BYTES >> 20);
            return Err(DataError::new(source, Some(line), msg));
        }
        let mut fields = Vec::with_capacity(record.len());
        for (i, raw) in record.iter().enumerate() {
            let text = std::str::from_utf8(raw).map_err(|_| DataError {
                source: source.to_string(),
                line: Some(line),
                column: None,
                message: format!("invalid UTF-8 in field {}", i + 1),
            })?;
            fields.push(text.replace("\r\n", "\n"));
        }
        if fields.len() == 1 && fields[0].trim().is_empty() {
            continue;
        }
        if columns.is_empty() {
            columns = fields.iter().map(|c| c.trim().to_string()).collect();
            continue;
        }
        blank_cells += count_blank(fields.iter().skip(1).map(String::as_str));
        let cells = fields.iter().map(|f| cell(f)).collect();
        rows.push(Record {
            line,
            cells: fit_row(source, line, columns.len(), cells)?,
        });
    }
    Ok(Table {
        source: source.to_string(),
        columns,
        rows,
        blank_cells,
    })
}

fn csv_error(source: &str, line: usize, e: csv::Error) -> DataError {
    let line = e.position().map_or(line, |p| p.line() as usize);
    DataError::new(source, Some(line), format!("malformed CSV: {e}"))
}

/// The csv reader takes a quote left open to the end of the input as a
/// field running to the end; in a table of texts and labels that is always
/// a mistake, so it is found first: the line where the open quote started.
fn unclosed_quote(bytes: &[u8]) -> Option<usize> {
    let (mut line, mut opened_at) = (1, None);
    let mut at_field_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match opened_at {
            None => match b {
                b'"' if at_field_start => opened_at = Some(line),
                b',' => at_field_start = true,
                b'\n' => {
                    line += 1;
                    at_field_start = true;
                }
                b'\r' => {}
                _ => at_field_start = false,
            },
            Some(_) => match b {
                b'"' if bytes.get(i + 1) == Some(&b'"') => i += 1,
                b'"' => {
                    opened_at = None;
                    at_field_start = false;
                }
                b'\n' => line += 1,
                _ => {}
            },
        }
        i += 1;
    }
    opened_at
}

fn read_jsonl<R: BufRead>(reader: R, source: &str) -> Result<Table, DataError> {
    let mut columns: Vec<String> = Vec::new();
    let mut objects = Vec::new();
    for item in lines(reader, source) {
        let (line, text) = item?;
        if text.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| DataError {
            source: source.to_string(),
            line: Some(line),
            column: Some(e.column()),
            message: format!("not valid JSON: {e}"),
        })?;
        let serde_json::Value::Object(map) = value else {
            return Err(DataError::new(source, Some(line), "expected a JSON object"));
        };
        for key in map.keys() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
        objects.push((line, map));
    }
    let rows = objects
        .into_iter()
        .map(|(line, map)| {
            let cells = columns
                .iter()
                .map(|c| match map.get(c) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => cell(s),
                    Some(other) => cell(&other.to_string()),
                })
                .collect();
            Record { line, cells }
        })
        .collect();
    Ok(Table {
        source: source.to_string(),
        columns,
        rows,
        blank_cells: 0,
    })
}
