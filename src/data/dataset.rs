//! From tables to tensors: label lists per task, token ids per text, class
//! indices per task and row (-1 for a missing label).

use std::collections::{BTreeSet, HashMap};

use crate::data::table::{DataError, Table};
use crate::data::tokens::TokenizedColumn;
use crate::data::vocab::{column_index, Vocab, UNK};

/// One task's classes, in index order (sorted label strings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelMap {
    pub task: String,
    pub classes: Vec<String>,
}

/// What to do with a label the model never saw in training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnseenLabel {
    /// Stop with an error naming the file, line, task and label.
    Error,
    /// Give the row the index `classes.len() + k`, `k` numbering the
    /// distinct unseen labels in order of first appearance (named in
    /// [`Summary::unseen_labels`]): a gold-only class, an error in every
    /// metric.
    Count,
}

/// How a table is encoded.
#[derive(Clone, Debug)]
pub struct EncodeOptions<'a> {
    pub text_column: &'a str,
    /// Texts are cut to this many tokens.
    pub max_len: usize,
    pub unseen: UnseenLabel,
    /// Training data: rows without any label and empty texts are skipped
    /// (with a counted warning), since they carry no signal.
    pub training: bool,
    /// Tasks whose column must be present; a missing column of another task
    /// leaves that task unlabelled.
    pub required: &'a [String],
}

/// Texts as token ids with their labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids of all texts, back to back.
    pub tokens: Vec<i32>,
    /// Text `i` is `tokens[offsets[i]..offsets[i + 1]]`.
    pub offsets: Vec<usize>,
    /// Per task, per row: class index (past the model's classes for a label
    /// it does not know, see [`UnseenLabel::Count`]), or -1 for a missing
    /// label.
    pub labels: Vec<Vec<i32>>,
    /// Source line of each row.
    pub lines: Vec<usize>,
    /// Which input file each row came from (0 when there is one).
    pub sources: Vec<u32>,
}

impl Encoded {
    pub fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn text(&self, row: usize) -> &[i32] {
        &self.tokens[self.offsets[row]..self.offsets[row + 1]]
    }
}

/// Counts reported about an encoded table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub rows_read: usize,
    pub rows_used: usize,
    /// Per task: rows carrying a label.
    pub labelled: Vec<usize>,
    /// Per task: rows whose label the model does not know.
    pub unknown_labels: Vec<usize>,
    /// Per task: the distinct labels the model does not know, in order of
    /// first appearance; the `k`-th has the class index `classes + k`.
    pub unseen_labels: Vec<Vec<String>>,
    /// Rows whose text has no token.
    pub empty_texts: usize,
    pub warnings: Vec<String>,
}

/// The classes of each task: the distinct labels of the training tables
/// that have its column, sorted. A task without any label is an error
/// naming the file.
pub fn label_maps(tables: &[&Table], tasks: &[String]) -> Result<Vec<LabelMap>, DataError> {
    tasks
        .iter()
        .map(|task| {
            let mut classes: BTreeSet<&str> = BTreeSet::new();
            let mut found = None;
            for table in tables {
                let Ok(column) = column_index(table, task) else {
                    continue;
                };
                found = Some(table);
                let labels = table.rows.iter().filter_map(|r| r.cell(column));
                classes.extend(labels.map(str::trim));
            }
            let Some(table) = found else {
                return Err(column_index(tables[0], task).unwrap_err());
            };
            if classes.is_empty() {
                let msg = format!("task {task:?} has no label in any row");
                return Err(DataError::new(&table.source, None, msg));
            }
            let classes = classes.into_iter().map(String::from).collect();
            Ok(LabelMap {
                task: task.clone(),
                classes,
            })
        })
        .collect()
}

/// Labels every row of `table` and turns the tokens of its text column
/// (`tokens`, from [`crate::data::tokens`]) into vocabulary ids.
pub fn encode_table(
    table: &Table,
    tokens: &TokenizedColumn,
    maps: &[LabelMap],
    vocab: &Vocab,
    options: &EncodeOptions<'_>,
) -> Result<(Encoded, Summary), DataError> {
    column_index(table, options.text_column)?;
    assert_eq!(tokens.rows(), table.rows.len(), "tokens of another table");
    let vocab_ids: Vec<i32> = tokens.lexicon.iter().map(|t| vocab.id(t)).collect();
    let mut task_columns = Vec::with_capacity(maps.len());
    for map in maps {
        match column_index(table, &map.task) {
            Ok(c) => task_columns.push(Some(c)),
            Err(e) if options.required.contains(&map.task) => return Err(e),
            Err(_) => task_columns.push(None),
        }
    }
    let indices: Vec<HashMap<&str, i32>> = maps
        .iter()
        .map(|m| {
            m.classes
                .iter()
                .enumerate()
                .map(|(i, c)| (c.as_str(), i as i32))
                .collect()
        })
        .collect();

    let tasks = maps.len();
    let mut out = Encoded {
        offsets: vec![0],
        labels: vec![Vec::new(); tasks],
        ..Encoded::default()
    };
    let mut summary = Summary {
        rows_read: table.rows.len(),
        labelled: vec![0; tasks],
        unknown_labels: vec![0; tasks],
        unseen_labels: vec![Vec::new(); tasks],
        ..Summary::default()
    };
    let mut unseen_indices: Vec<HashMap<String, i32>> = vec![HashMap::new(); tasks];
    let mut unlabelled = 0;
    let mut row_labels = vec![0i32; tasks];
    let mut ids = Vec::new();

    for (row_index, row) in table.rows.iter().enumerate() {
        for (i, column) in task_columns.iter().enumerate() {
            row_labels[i] = -1;
            let Some(label) = column.and_then(|c| row.cell(c)) else {
                continue;
            };
            let label = label.trim();
            row_labels[i] = match indices[i].get(label) {
                Some(&index) => index,
                None if options.unseen == UnseenLabel::Count => {
                    summary.unknown_labels[i] += 1;
                    match unseen_indices[i].get(label) {
                        Some(&index) => index,
                        None => {
                            let unseen = &mut summary.unseen_labels[i];
                            let index = (maps[i].classes.len() + unseen.len()) as i32;
                            unseen.push(label.to_string());
                            unseen_indices[i].insert(label.to_string(), index);
                            index
                        }
                    }
                }
                None => {
                    let msg = format!(
                        "task {:?}: label {:?} never appeared in training",
                        maps[i].task,
                        shortened(label)
                    );
                    return Err(DataError::new(&table.source, Some(row.line), msg));
                }
            };
        }

        ids.clear();
        let row_tokens = tokens.row(row_index);
        let kept = &row_tokens[..row_tokens.len().min(options.max_len)];
        ids.extend(kept.iter().map(|&t| vocab_ids[t as usize]));
        if options.training {
            if row_labels.iter().all(|&y| y < 0) {
                unlabelled += 1;
                continue;
            }
            if ids.is_empty() {
                summary.empty_texts += 1;
                continue;
            }
        } else if ids.is_empty() {
            summary.empty_texts += 1;
        }

        for (i, &y) in row_labels.iter().enumerate() {
            out.labels[i].push(y);
            if y >= 0 {
                summary.labelled[i] += 1;
            }
        }
        out.tokens.extend_from_slice(&ids);
        out.offsets.push(out.tokens.len());
        out.lines.push(row.line);
        out.sources.push(0);
    }
    summary.rows_used = out.rows();

    let source = &table.source;
    if unlabelled > 0 {
        summary.warnings.push(format!(
            "{source}: {unlabelled} row{} with no label for any task, skipped",
            plural(unlabelled)
        ));
    }
    if options.training && summary.empty_texts > 0 {
        summary.warnings.push(format!(
            "{source}: {} empty text{} (no tokens), skipped",
            summary.empty_texts,
            plural(summary.empty_texts)
        ));
    }
    if options.training && table.blank_cells > 0 {
        summary.warnings.push(format!(
            "{source}: {} cell{} holding only spaces, read as missing",
            table.blank_cells,
            plural(table.blank_cells)
        ));
    }
    for (i, map) in maps.iter().enumerate() {
        if summary.unknown_labels[i] > 0 {
            summary.warnings.push(format!(
                "{source}: task {:?}: {} row{} with a label unknown to the model, \
                 counted as errors",
                map.task,
                summary.unknown_labels[i],
                plural(summary.unknown_labels[i])
            ));
        }
    }
    if options.training {
        summary
            .warnings
            .extend(label_warnings(table, maps, &task_columns)?);
    }
    if options.training && summary.rows_used == 0 {
        return Err(DataError::new(
            source,
            None,
            "no row with both a text and a label",
        ));
    }
    Ok((out, summary))
}

/// Training labels that look wrong: a single class is warned about; about
/// as many distinct values as rows (a text or id column taken for labels)
/// is warned about in a small table and refused in a larger one, where it
/// would give a head of thousands of classes.
fn label_warnings(
    table: &Table,
    maps: &[LabelMap],
    columns: &[Option<usize>],
) -> Result<Vec<String>, DataError> {
    const REFUSED_FROM_ROWS: usize = 100;

    let mut warnings = Vec::new();
    for (map, column) in maps.iter().zip(columns) {
        let Some(column) = column else { continue };
        let labelled = table
            .rows
            .iter()
            .filter(|r| r.cell(*column).is_some())
            .count();
        let classes = map.classes.len();
        if classes == 1 {
            warnings.push(format!(
                "{}: task {:?} has a single class ({:?}): nothing to learn",
                table.source,
                map.task,
                shortened(&map.classes[0])
            ));
        } else if labelled >= REFUSED_FROM_ROWS && classes * 2 > labelled {
            let msg = format!(
                "task {:?} has {classes} distinct labels in {labelled} rows, so it is not a \
                 label column; name the text column with --text-column, or the tasks with \
                 --tasks",
                map.task
            );
            return Err(DataError::new(&table.source, None, msg));
        } else if labelled >= 20 && classes * 2 > labelled {
            warnings.push(format!(
                "{}: task {:?} has {classes} distinct labels in {labelled} rows: \
                 probably not a label column",
                table.source, map.task
            ));
        }
    }
    Ok(warnings)
}

/// A label as shown in a message: whole, or its first 60 characters when
/// it is a long text.
pub fn shortened(label: &str) -> String {
    const SHOWN: usize = 60;
    match label.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", label[..end].trim_end()),
        None => label.to_string(),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Share of tokens that are unknown words.
pub fn unknown_rate(encoded: &Encoded) -> f64 {
    if encoded.tokens.is_empty() {
        return 0.0;
    }
    encoded.tokens.iter().filter(|&&t| t == UNK).count() as f64 / encoded.tokens.len() as f64
}
