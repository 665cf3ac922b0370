//! Reading labelled tables: TSV, CSV (RFC 4180) and JSON Lines.
//!
//! Whatever the format, a table is a header of column names and records of
//! optional cells: an empty cell, a cell of only whitespace, a JSON `null`
//! and an absent JSON key all mean "missing". Input may start with a UTF-8
//! byte-order mark and use LF or CRLF line ends; neither survives into a
//! cell. Every error names the source, the line and, where it helps, the
//! column.
//!
//! Input is not trusted: lines are capped at [`MAX_LINE_BYTES`], and bytes
//! that mean the file is not a UTF-8 text table (NUL bytes, a UTF-16
//! byte-order mark, a byte-order mark inside the file, bare CR line ends)
//! are errors rather than text that would quietly become odd tokens or
//! labels.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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
    /// The cells holding a value, as (column, value) in column order; a
    /// column not listed is missing. Sparse, so that a wide header over
    /// short rows (or JSON lines each naming a new key) costs memory in
    /// proportion to the input, not to rows x columns.
    cells: Vec<(usize, String)>,
}

impl Record {
    /// A record from its cells in column order; `None` is a missing value.
    pub fn new(line: usize, cells: impl IntoIterator<Item = Option<String>>) -> Record {
        let cells = cells
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| Some((i, c?)))
            .collect();
        Record { line, cells }
    }

    /// The value in `column`, or `None` when it is missing.
    pub fn cell(&self, column: usize) -> Option<&str> {
        self.cells
            .binary_search_by_key(&column, |(c, _)| *c)
            .ok()
            .map(|i| self.cells[i].1.as_str())
    }

    /// The cells holding a value, as (column, value) in column order.
    pub fn values(&self) -> impl Iterator<Item = (usize, &str)> {
        self.cells.iter().map(|(c, v)| (*c, v.as_str()))
    }
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

    fn at(source: &str, line: usize, column: usize, message: impl Into<String>) -> DataError {
        DataError {
            source: source.to_string(),
            line: Some(line),
            column: Some(column),
            message: message.into(),
        }
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads the table at `path`; the format comes from `format` or else the
/// extension.
pub fn read_table(path: &Path, format: Option<Format>) -> Result<Table, DataError> {
    let source = path.display().to_string();
    if path.is_dir() {
        let msg = "a folder, not a table file (a folder of train, valid and test tables \
                   goes to --data)";
        return Err(DataError::new(&source, None, msg));
    }
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
    if head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF") {
        let msg = "the file is UTF-16 (it starts with a UTF-16 byte-order mark): save it as UTF-8";
        return Err(DataError::at(source, 1, 1, msg));
    }
    if head.starts_with(BOM) {
        reader.consume(BOM.len());
    }
    Ok(())
}

/// A byte-order mark belongs at the start of a file only (where it was
/// already skipped); one at the start of a line is what joining files with
/// `cat` leaves behind, and would otherwise turn a header into a data row
/// or a label into a new class.
fn check_no_inner_bom(source: &str, line: usize, text: &str) -> Result<(), DataError> {
    if text.starts_with('\u{FEFF}') {
        let msg = "byte-order mark (U+FEFF) at the start of a line inside the file: \
                   were files joined together? Remove it, and any repeated header";
        return Err(DataError::at(source, line, 1, msg));
    }
    Ok(())
}

/// 1-based line and character column of byte `at` in `bytes`.
fn locate(bytes: &[u8], at: usize) -> (usize, usize) {
    let before = &bytes[..at];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    (line, text_column(&before[line_start..]))
}

fn nul_error(source: &str, line: usize, column: usize) -> DataError {
    let msg = "NUL byte: this is a binary or UTF-16 file, not UTF-8 text";
    DataError::at(source, line, column, msg)
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
    for (i, name) in table.columns.iter().enumerate() {
        if name.is_empty() {
            let msg = format!(
                "field {} of the header is empty: every column needs a name",
                i + 1
            );
            return Err(DataError::new(&table.source, Some(1), msg));
        }
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
        if let Some(at) = buf.iter().position(|&b| b == 0) {
            return Some(Err(nul_error(source, number, text_column(&buf[..at]))));
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
    let valid = match std::str::from_utf8(valid) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&valid[..e.valid_up_to()]).unwrap_or_default(),
    };
    valid.chars().count() + 1
}

/// Plain text, one text per line (LF or CRLF, an optional byte-order mark
/// first): every line is kept, empty ones too, under the same size, NUL
/// and UTF-8 checks as the tables.
pub fn read_text_lines<R: Read>(reader: R, source: &str) -> Result<Vec<Record>, DataError> {
    let mut reader = BufReader::new(reader);
    skip_bom(&mut reader, source)?;
    lines(reader, source)
        .map(|item| {
            item.map(|(line, text)| Record {
                line,
                cells: vec![(0, text)],
            })
        })
        .collect()
}

/// A row of `fields` under a header of `columns`; fewer fields leave the
/// last columns missing, more are an error.
fn fit_row(
    source: &str,
    line: usize,
    columns: usize,
    fields: Vec<Option<String>>,
) -> Result<Record, DataError> {
    if fields.len() > columns {
        let msg = format!("row has {} fields, the header has {columns}", fields.len());
        return Err(DataError::new(source, Some(line), msg));
    }
    Ok(Record::new(line, fields))
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
            Some((line, header)) => {
                check_no_bare_cr(source, line, &header)?;
                check_no_inner_bom(source, line, &header)?;
                break header
                    .split('\t')
                    .map(|c| c.trim().to_string())
                    .collect::<Vec<_>>();
            }
        }
    };
    let (mut rows, mut blank_cells) = (Vec::new(), 0);
    for item in lines {
        let (line, text) = item?;
        if text.trim().is_empty() {
            continue;
        }
        check_no_inner_bom(source, line, &text)?;
        blank_cells += count_blank(text.split('\t').skip(1));
        let fields = text.split('\t').map(cell).collect();
        rows.push(fit_row(source, line, columns.len(), fields)?);
    }
    Ok(Table {
        source: source.to_string(),
        columns,
        rows,
        blank_cells,
    })
}

/// A carriage return left inside a line after LF and CRLF ends were taken
/// off means the file ends its lines with CR alone (old Mac exports): the
/// whole file would read as one line.
fn check_no_bare_cr(source: &str, line: usize, text: &str) -> Result<(), DataError> {
    if let Some(at) = text.find('\r') {
        let column = text[..at].chars().count() + 1;
        let msg = "carriage return (CR) inside the line: lines must end in LF or CRLF, \
                   not CR alone; convert the file";
        return Err(DataError::at(source, line, column, msg));
    }
    Ok(())
}

/// The whole input, refusing NUL bytes as they arrive (so that a device
/// such as `/dev/zero` given by mistake fails at once instead of filling
/// memory) and checking that it is UTF-8.
fn read_text_bytes<R: Read>(mut reader: R, source: &str) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DataError::new(source, None, format!("cannot read: {e}"))),
        };
        if let Some(i) = chunk[..n].iter().position(|&b| b == 0) {
            let (line, column) = locate(&[&bytes[..], &chunk[..i]].concat(), bytes.len() + i);
            return Err(nul_error(source, line, column));
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    if let Err(e) = std::str::from_utf8(&bytes) {
        let (line, column) = locate(&bytes, e.valid_up_to());
        return Err(DataError::at(source, line, column, "invalid UTF-8"));
    }
    Ok(bytes)
}

fn read_csv<R: BufRead>(reader: R, source: &str) -> Result<Table, DataError> {
    let bytes = read_text_bytes(reader, source)?;
    check_csv_lines(source, &bytes)?;

    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let mut record = csv::ByteRecord::new();
    let mut columns: Vec<String> = Vec::new();
    let (mut rows, mut blank_cells) = (Vec::new(), 0);
    loop {
        let start = csv.position().clone();
        match csv.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(source, &bytes, &start, e)),
        }
        let line = record_line(&bytes, record.position().unwrap_or(&start));
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
        check_no_inner_bom(source, line, &fields[0])?;
        if columns.is_empty() {
            columns = fields.iter().map(|c| c.trim().to_string()).collect();
            continue;
        }
        blank_cells += count_blank(fields.iter().skip(1).map(String::as_str));
        let cells = fields.iter().map(|f| cell(f)).collect();
        rows.push(fit_row(source, line, columns.len(), cells)?);
    }
    Ok(Table {
        source: source.to_string(),
        columns,
        rows,
        blank_cells,
    })
}

fn csv_error(source: &str, bytes: &[u8], start: &csv::Position, e: csv::Error) -> DataError {
    let line = record_line(bytes, e.position().unwrap_or(start));
    DataError::new(source, Some(line), format!("malformed CSV: {e}"))
}

/// The line a record starts on. The csv reader gives the position where it
/// began looking for the record: after a CRLF that is the LF still on the
/// line before, and blank lines come before the record too, so line ends
/// at that position are stepped over.
fn record_line(bytes: &[u8], position: &csv::Position) -> usize {
    let mut line = position.line() as usize;
    let rest = bytes.get(position.byte() as usize..).unwrap_or_default();
    for &b in rest.iter().take_while(|&&b| b == b'\r' || b == b'\n') {
        line += usize::from(b == b'\n');
    }
    line
}

/// Two things the csv reader accepts that a table of texts and labels
/// never means: a quote left open to the end of the input (read as a field
/// running to the end; reported at the line where it opened), and a bare
/// CR ending a line outside quotes (the reader counts only LF, so every
/// record would claim line 1).
fn check_csv_lines(source: &str, bytes: &[u8]) -> Result<(), DataError> {
    let (mut line, mut line_start, mut opened_at) = (1, 0, None);
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
                    line_start = i + 1;
                    at_field_start = true;
                }
                b'\r' if bytes.get(i + 1) != Some(&b'\n') && i + 1 < bytes.len() => {
                    let text = std::str::from_utf8(&bytes[line_start..i]).unwrap_or_default();
                    return check_no_bare_cr(source, line, &format!("{text}\r"));
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
                b'\n' => {
                    line += 1;
                    line_start = i + 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    match opened_at {
        Some(line) => {
            let msg = "a quoted field opened here is never closed";
            Err(DataError::new(source, Some(line), msg))
        }
        None => Ok(()),
    }
}

fn read_jsonl<R: BufRead>(reader: R, source: &str) -> Result<Table, DataError> {
    let mut columns: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut rows = Vec::new();
    for item in lines(reader, source) {
        let (line, text) = item?;
        if text.trim().is_empty() {
            continue;
        }
        check_no_inner_bom(source, line, &text)?;
        let entries = match serde_json::from_str::<JsonLine>(&text) {
            Ok(JsonLine::Object(entries)) => entries,
            Ok(JsonLine::Other(kind)) => {
                let msg = format!("expected a JSON object, found {kind}");
                return Err(DataError::new(source, Some(line), msg));
            }
            Err(e) => {
                check_no_bare_cr(source, line, &text)?;
                return Err(json_error(source, line, &text, e));
            }
        };
        let mut cells = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let text = match value {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => cell(&s),
                serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
                    let kind = if value.is_array() {
                        "an array"
                    } else {
                        "an object"
                    };
                    let msg =
                        format!("field {key:?} holds {kind}: expected a string, number or boolean");
                    return Err(DataError::new(source, Some(line), msg));
                }
                other => cell(&other.to_string()),
            };
            let column = *index.entry(key).or_insert_with_key(|key| {
                columns.push(key.clone());
                columns.len() - 1
            });
            if let Some(text) = text {
                cells.push((column, text));
            }
        }
        cells.sort_unstable_by_key(|(c, _)| *c);
        rows.push(Record { line, cells });
    }
    Ok(Table {
        source: source.to_string(),
        columns,
        rows,
        blank_cells: 0,
    })
}

/// A JSON parse error located in the file: serde_json counts lines and
/// columns within the one line it was given, so its own "at line 1 column
/// N" suffix is dropped in favour of the file's line and the column.
fn json_error(source: &str, line: usize, text: &str, e: serde_json::Error) -> DataError {
    let full = e.to_string();
    let reason = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(m, _)| m);
    let prefix = if e.is_data() { "" } else { "not valid JSON: " };
    // serde_json's column counts bytes; the file position is in characters.
    let byte = e.column().saturating_sub(1).min(text.len());
    let column = text_column(&text.as_bytes()[..byte]).max(1);
    DataError::at(source, line, column, format!("{prefix}{reason}"))
}

/// One line of JSON Lines: an object's entries in file order, or what was
/// found instead of an object.
enum JsonLine {
    Object(Vec<(String, serde_json::Value)>),
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for JsonLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JsonLine, D::Error> {
        deserializer.deserialize_any(JsonLineVisitor)
    }
}

struct JsonLineVisitor;

impl<'de> Visitor<'de> for JsonLineVisitor {
    type Value = JsonLine;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    /// The entries in order; a key given twice is an error, since which of
    /// the two values is meant cannot be known (JSON parsers disagree).
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonLine, A::Error> {
        let mut entries: Vec<(String, serde_json::Value)> = Vec::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!(
                    "key {key:?} appears twice in the object"
                )));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(JsonLine::Object(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonLine, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(JsonLine::Other("an array"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<JsonLine, E> {
        Ok(JsonLine::Other("a string"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<JsonLine, E> {
        Ok(JsonLine::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<JsonLine, E> {
        Ok(JsonLine::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<JsonLine, E> {
        Ok(JsonLine::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<JsonLine, E> {
        Ok(JsonLine::Other("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<JsonLine, E> {
        Ok(JsonLine::Other("null"))
    }
}
