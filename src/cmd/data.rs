//! From the command line's file arguments to encoded data: finding the
//! files, reading the tables, building the vocabulary and label lists.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::loaded::LoadedModel;
use crate::checkpoint::Fingerprint;
use crate::cli::{FormatArg, InputFormat, PredictArgs, TrainArgs};
use crate::data::dataset::{
    encode_table, label_maps, EncodeOptions, Encoded, LabelMap, Summary, UnseenLabel,
};
use crate::data::table::{read_table, read_table_from, Format, Table};
use crate::data::tokenizer::Tokenizer;
use crate::data::tokens::{tokenize_column, TokenCache, TokenizedColumn};
use crate::data::vocab::Vocab;
use crate::fsutil::same_file;
use crate::usage;

/// The default data set, embedded so `polyhead train` needs no files.
const EMBEDDED: [(&str, &str); 3] = [
    (
        "train",
        include_str!("../../data/clothing-reviews/train.tsv"),
    ),
    (
        "valid",
        include_str!("../../data/clothing-reviews/valid.tsv"),
    ),
    ("test", include_str!("../../data/clothing-reviews/test.tsv")),
];

/// Everything training needs from the data.
pub struct Prepared {
    pub train: Encoded,
    pub valid: Option<Encoded>,
    pub test: Option<Encoded>,
    pub vocab: Vec<String>,
    /// Task name and its classes, in the model's order.
    pub tasks: Vec<(String, Vec<String>)>,
    pub warnings: Vec<String>,
    /// Tables read, and how many of them had their tokens in the cache.
    pub tables: usize,
    pub tables_cached: usize,
    summary: Summary,
    sources: Vec<String>,
}

impl Prepared {
    /// A hash of the encoded training data, vocabulary and label lists.
    pub fn fingerprint(&self) -> String {
        let mut f = Fingerprint::default();
        for word in &self.vocab {
            f.text(word);
        }
        for (task, classes) in &self.tasks {
            f.text(task);
            classes.iter().for_each(|c| f.text(c));
        }
        f.ints(&self.train.tokens);
        f.bytes(&(self.train.offsets.len() as u64).to_le_bytes());
        for offset in &self.train.offsets {
            f.bytes(&(*offset as u64).to_le_bytes());
        }
        for labels in &self.train.labels {
            f.ints(labels);
        }
        f.hex()
    }

    /// A few lines describing the data, printed before training.
    pub fn summary(&self) -> String {
        let mut lines = vec![format!("data: {}", self.sources.join(", "))];
        let valid = self.valid.as_ref().map_or(0, Encoded::rows);
        let test = self.test.as_ref().map_or(0, Encoded::rows);
        lines.push(format!(
            "rows: train {} used of {} read, valid {valid}, test {test}; vocabulary {} words + 2",
            self.summary.rows_used,
            self.summary.rows_read,
            self.vocab.len() - 2
        ));
        for (i, (name, classes)) in self.tasks.iter().enumerate() {
            lines.push(format!(
                "  {name}: {} classes, {} labelled training rows",
                classes.len(),
                self.summary.labelled[i]
            ));
        }
        lines.join("\n")
    }
}

fn format_of(arg: Option<FormatArg>) -> Option<Format> {
    arg.map(|f| match f {
        FormatArg::Tsv => Format::Tsv,
        FormatArg::Csv => Format::Csv,
        FormatArg::Jsonl => Format::Jsonl,
    })
}

/// `DIR/train.*` etc.: the file with a known extension, if any; two of
/// them (`train.tsv` and `train.csv`) are an error rather than a guess.
fn find_split(dir: &Path, split: &str) -> Result<Option<PathBuf>> {
    let found: Vec<PathBuf> = ["tsv", "tab", "csv", "jsonl", "ndjson", "json"]
        .iter()
        .map(|ext| dir.join(format!("{split}.{ext}")))
        .filter(|p| p.is_file())
        .collect();
    if let [first, second, ..] = found.as_slice() {
        usage!(
            "--data {}: both {} and {} are there; keep one",
            dir.display(),
            first.display(),
            second.display()
        );
    }
    Ok(found.into_iter().next())
}

/// The index of the text column, or a usage error naming the file and the
/// columns it has.
fn text_column_of(table: &Table, text_column: &str) -> Result<usize> {
    let Some(index) = table.columns.iter().position(|c| c == text_column) else {
        // One column whose name holds separators: the file was split with
        // the wrong format.
        let one_joined = matches!(table.columns.as_slice(), [only] if only.contains(['\t', ',']));
        let hint = if one_joined {
            "; the header reads as one column: is --format right?"
        } else {
            "; choose the text column with --text-column"
        };
        usage!(
            "{}: no column {text_column:?} (columns: {}){hint}",
            table.source,
            crate::data::vocab::column_list(&table.columns).replace('\t', "\\t")
        );
    };
    Ok(index)
}

/// One table and the tasks it labels: `(task, column)` pairs.
struct Source {
    table: Table,
    tasks: Vec<(String, String)>,
    /// The text column's tokens, filled once the column is known to exist.
    tokens: TokenizedColumn,
}

/// The tables of one split.
type Split = Vec<Source>;

/// `TASK=FILE` as `(Some(TASK), FILE)`; a plain file (even one whose name
/// holds `=`) as `(None, FILE)`.
fn split_spec(spec: &str) -> (Option<&str>, &str) {
    match spec.split_once('=') {
        Some((task, file)) if !task.is_empty() && !Path::new(spec).exists() => (Some(task), file),
        _ => (None, spec),
    }
}

/// Every file the training arguments read, so that no output overwrites
/// one of them.
pub fn input_files(args: &TrainArgs) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [&args.train, &args.valid, &args.test]
        .into_iter()
        .flatten()
        .map(|spec| PathBuf::from(split_spec(spec).1))
        .collect();
    match &args.data {
        Some(dir) if dir.is_dir() => {
            files.extend(
                ["train", "valid", "test"]
                    .iter()
                    .filter_map(|s| find_split(dir, s).ok().flatten()),
            );
        }
        Some(file) => files.push(file.clone()),
        None => {}
    }
    files
}

/// A file given twice for the same task of one split is refused (its rows
/// would count twice); a training file that is also a validation or test
/// file is warned about, since its scores then measure memory.
fn repeated_inputs(args: &TrainArgs) -> Result<Vec<String>> {
    let splits = [
        ("--train", &args.train),
        ("--valid", &args.valid),
        ("--test", &args.test),
    ];
    for (flag, specs) in splits {
        for (i, first) in specs.iter().enumerate() {
            let (task, file) = split_spec(first);
            let twice = specs[i + 1..].iter().map(|s| split_spec(s)).any(|(t, f)| {
                same_file(Path::new(f), Path::new(file))
                    && (t == task || t.is_none() || task.is_none())
            });
            if twice {
                usage!(
                    "{flag}: {file} is given twice for the same task; its rows would count twice"
                );
            }
        }
    }

    let mut warnings = Vec::new();
    for (flag, specs) in &splits[1..] {
        for spec in specs.iter() {
            let file = split_spec(spec).1;
            let in_training = args
                .train
                .iter()
                .any(|t| same_file(Path::new(split_spec(t).1), Path::new(file)));
            if in_training {
                warnings.push(format!(
                    "{flag} {file} is also a training file: its scores measure what the model \
                     memorised, not how it does on new texts"
                ));
            }
        }
    }
    Ok(warnings)
}

/// Reads `[TASK=]FILE` specs. A plain file labels every task it has a
/// column for; `TASK=FILE` labels only TASK, from the column of that name
/// or else the file's one column besides the text.
fn read_sources(specs: &[String], args: &TrainArgs) -> Result<Split> {
    let format = format_of(args.format);
    specs
        .iter()
        .map(|spec| {
            let (task, file) = split_spec(spec);
            let task = task.map(str::to_string);
            let table = read_table(Path::new(file), format)?;
            Ok(Source {
                tasks: source_tasks(&table, task, args)?,
                table,
                tokens: TokenizedColumn::default(),
            })
        })
        .collect()
}

fn source_tasks(
    table: &Table,
    task: Option<String>,
    args: &TrainArgs,
) -> Result<Vec<(String, String)>> {
    let others: Vec<&String> = table
        .columns
        .iter()
        .filter(|c| **c != args.text_column)
        .collect();
    let Some(task) = task else {
        let wanted = |c: &String| args.tasks.as_ref().is_none_or(|t| t.contains(c));
        return Ok(others
            .into_iter()
            .filter(|c| wanted(c))
            .map(|c| (c.clone(), c.clone()))
            .collect());
    };
    let column = if others.iter().any(|c| **c == task) {
        task.clone()
    } else if others.len() == 1 {
        others[0].clone()
    } else {
        usage!(
            "{}: no column {task:?} and more than one label column (columns: {}); \
             name the column after the task",
            table.source,
            table.columns.join(", ")
        );
    };
    Ok(vec![(task, column)])
}

/// Reads the training, validation and test tables the arguments name.
fn read_training_tables(args: &TrainArgs) -> Result<(Split, Split, Split)> {
    if !args.train.is_empty() {
        return Ok((
            read_sources(&args.train, args)?,
            read_sources(&args.valid, args)?,
            read_sources(&args.test, args)?,
        ));
    }
    let format = format_of(args.format);
    let whole = |table: Table| -> Result<Split> {
        let tasks = source_tasks(&table, None, args)?;
        Ok(vec![Source {
            table,
            tasks,
            tokens: TokenizedColumn::default(),
        }])
    };
    let read = |path: &Path| -> Result<Split> { whole(read_table(path, format)?) };
    match &args.data {
        Some(path) if path.is_dir() => {
            let Some(train) = find_split(path, "train")? else {
                usage!(
                    "--data {}: no train.tsv, train.csv or train.jsonl in it",
                    path.display()
                );
            };
            let valid = find_split(path, "valid")?.map(|p| read(&p)).transpose()?;
            let test = find_split(path, "test")?.map(|p| read(&p)).transpose()?;
            Ok((
                read(&train)?,
                valid.unwrap_or_default(),
                test.unwrap_or_default(),
            ))
        }
        Some(path) if path.is_file() => Ok((read(path)?, Vec::new(), Vec::new())),
        Some(path) => usage!("--data {}: no such file or folder", path.display()),
        None => {
            let embedded = |(name, text): (&str, &str)| -> Result<Split> {
                let source = format!("clothing-reviews/{name}.tsv (embedded)");
                whole(read_table_from(text.as_bytes(), &source, Format::Tsv)?)
            };
            Ok((
                embedded(EMBEDDED[0])?,
                embedded(EMBEDDED[1])?,
                embedded(EMBEDDED[2])?,
            ))
        }
    }
}

/// Renames each source's label columns to their task names, and hides its
/// other columns, so every table reads the same way.
fn align_columns(split: &mut Split, text_column: &str) {
    for source in split {
        for column in &mut source.table.columns {
            if column == text_column {
                continue;
            }
            match source.tasks.iter().find(|(_, c)| c == column) {
                Some((task, _)) => *column = task.clone(),
                None => *column = format!("\u{0}unused:{column}"),
            }
        }
    }
}

pub fn prepare_training(args: &TrainArgs) -> Result<Prepared> {
    let mut warnings = repeated_inputs(args)?;
    let (mut train, mut valid, mut test) = read_training_tables(args)?;
    let tokenizer = Tokenizer::default();
    let cache = if args.no_cache {
        None
    } else {
        TokenCache::from_env()
    };
    let mut cached = 0;
    for source in [&mut train, &mut valid, &mut test].into_iter().flatten() {
        let column = text_column_of(&source.table, &args.text_column)?;
        source.tokens = match &cache {
            Some(cache) => {
                let (tokens, hit) = cache.tokens(&source.table, column, &tokenizer);
                cached += usize::from(hit);
                tokens
            }
            None => tokenize_column(&source.table, column, &tokenizer),
        };
    }
    if let Some(error) = cache.as_ref().and_then(TokenCache::write_error) {
        warnings.push(format!("the token cache could not store tokens: {error}"));
    }
    let mut task_names: Vec<String> = Vec::new();
    for (task, _) in train.iter().flat_map(|s| &s.tasks) {
        if !task_names.contains(task) {
            task_names.push(task.clone());
        }
    }
    if let Some(wanted) = &args.tasks {
        if let Some(missing) = wanted.iter().find(|t| !task_names.contains(t)) {
            if *missing == args.text_column {
                usage!("--tasks: {missing:?} is the text column (--text-column), not a task");
            }
            let source = &train[0].table;
            usage!(
                "--tasks: {}: no column {missing:?} (columns: {})",
                source.source,
                source.columns.join(", ")
            );
        }
        task_names.retain(|t| wanted.contains(t));
    }
    if task_names.is_empty() {
        usage!(
            "{}: no task column besides the text column {:?}",
            train[0].table.source,
            args.text_column
        );
    }
    for (flag, specs) in [("--valid", &args.valid), ("--test", &args.test)] {
        let named = specs.iter().filter_map(|s| Some((s, split_spec(s).0?)));
        if let Some((spec, task)) = named
            .into_iter()
            .find(|(_, t)| !task_names.iter().any(|n| n == t))
        {
            usage!(
                "{flag} {spec}: no task {task:?} in the training data (tasks: {})",
                task_names.join(", ")
            );
        }
    }
    for split in [&mut train, &mut valid, &mut test] {
        align_columns(split, &args.text_column);
    }

    let tables: Vec<&Table> = train.iter().map(|s| &s.table).collect();
    let tokens: Vec<&TokenizedColumn> = train.iter().map(|s| &s.tokens).collect();
    let vocab = Vocab::from_tokens(&tokens, args.min_count, args.vocab_size);
    let maps = label_maps(&tables, &task_names)?;

    if vocab.words().len() <= 2 {
        warnings.push(format!(
            "the vocabulary is empty: no word is seen --min-count {} times, so every \
             word reads as unknown",
            args.min_count
        ));
    }
    // Each table labels the tasks it has a column for (or the one its
    // `TASK=FILE` names); a task no validation or test table labels is
    // warned about, since it goes unscored there.
    for (flag, split) in [("--valid", &valid), ("--test", &test)] {
        if split.is_empty() {
            continue;
        }
        let unscored: Vec<&str> = task_names
            .iter()
            .filter(|t| {
                !split
                    .iter()
                    .flat_map(|s| &s.tasks)
                    .any(|(task, _)| task == *t)
            })
            .map(String::as_str)
            .collect();
        if unscored.len() == task_names.len() {
            let names: Vec<&str> = split.iter().map(|s| s.table.source.as_str()).collect();
            usage!(
                "{flag} {}: no column for any task (tasks: {})",
                names.join(", "),
                task_names.join(", ")
            );
        }
        if !unscored.is_empty() {
            warnings.push(format!(
                "{flag}: no column for {} {}: not scored there",
                if unscored.len() == 1 { "task" } else { "tasks" },
                unscored.join(", ")
            ));
        }
    }
    let mut encode_split = |split: &Split, training: bool| -> Result<Option<(Encoded, Summary)>> {
        let mut parts = Vec::new();
        for source in split {
            if source.table.rows.is_empty() {
                bail!("{}: no rows under the header", source.table.source);
            }
            let required: Vec<String> = source.tasks.iter().map(|(t, _)| t.clone()).collect();
            let unseen = if training || !args.allow_unseen_labels {
                UnseenLabel::Error
            } else {
                UnseenLabel::Count
            };
            let options = EncodeOptions {
                text_column: &args.text_column,
                max_len: args.max_len,
                unseen,
                training,
                required: &required,
            };
            let (encoded, summary) =
                encode_table(&source.table, &source.tokens, &maps, &vocab, &options)?;
            warnings.extend(summary.warnings.iter().cloned());
            parts.push((encoded, summary));
        }
        Ok(concatenate(parts, &maps))
    };
    let (train_encoded, summary) = encode_split(&train, true)?.expect("a training table was read");
    let valid_encoded = encode_split(&valid, false)?.map(|(e, _)| e);
    let test_encoded = encode_split(&test, false)?.map(|(e, _)| e);
    for (split, encoded) in [(&valid, &valid_encoded), (&test, &test_encoded)] {
        let unlabelled = |e: &Encoded| e.labels.iter().flatten().all(|&y| y < 0);
        if encoded.as_ref().is_some_and(unlabelled) {
            let names: Vec<&str> = split.iter().map(|s| s.table.source.as_str()).collect();
            bail!("{}: no row with a label to score", names.join(", "));
        }
    }
    if valid_encoded.is_none() {
        let flag = match (&args.monitor, args.early_stop_patience) {
            (Some(_), _) => Some("--monitor"),
            (None, Some(_)) => Some("--early-stop-patience"),
            (None, None) => None,
        };
        if let Some(flag) = flag {
            usage!("{flag} needs a validation file (--valid, or valid.tsv in --data)");
        }
        warnings.push("no validation file: training without per-epoch scores".to_string());
    }

    let sources: Vec<String> = [&train, &valid, &test]
        .into_iter()
        .flatten()
        .map(|s| format!("{} ({} rows)", s.table.source, s.table.rows.len()))
        .collect();
    Ok(Prepared {
        train: train_encoded,
        valid: valid_encoded,
        test: test_encoded,
        vocab: vocab.words().to_vec(),
        tasks: maps.into_iter().map(|m| (m.task, m.classes)).collect(),
        warnings,
        tables: sources.len(),
        tables_cached: cached,
        summary,
        sources,
    })
}

/// Joins the encoded tables of one split, numbering their sources. A label
/// unknown to the model keeps one class index across the tables: the
/// index of its first appearance in the split.
fn concatenate(parts: Vec<(Encoded, Summary)>, maps: &[LabelMap]) -> Option<(Encoded, Summary)> {
    let mut parts = parts.into_iter().enumerate();
    let (_, (mut all, mut summary)) = parts.next()?;
    for (index, (part, s)) in parts {
        let base = all.tokens.len();
        all.tokens.extend_from_slice(&part.tokens);
        all.offsets
            .extend(part.offsets[1..].iter().map(|o| o + base));
        for (task, more) in part.labels.iter().enumerate() {
            let known = maps[task].classes.len();
            let unseen = &mut summary.unseen_labels[task];
            let mut index_of: HashMap<String, usize> = unseen.iter().cloned().zip(0..).collect();
            let renumbered: Vec<i32> = s.unseen_labels[task]
                .iter()
                .map(|label| {
                    let k = *index_of.entry(label.clone()).or_insert_with(|| {
                        unseen.push(label.clone());
                        unseen.len() - 1
                    });
                    (known + k) as i32
                })
                .collect();
            let labels = more.iter().map(|&y| match usize::try_from(y) {
                Ok(y) if y >= known => renumbered[y - known],
                _ => y,
            });
            all.labels[task].extend(labels);
        }
        all.lines.extend_from_slice(&part.lines);
        all.sources
            .extend(std::iter::repeat_n(index as u32, part.rows()));
        summary.rows_read += s.rows_read;
        summary.rows_used += s.rows_used;
        summary.empty_texts += s.empty_texts;
        for (a, b) in summary.labelled.iter_mut().zip(&s.labelled) {
            *a += b;
        }
        for (a, b) in summary.unknown_labels.iter_mut().zip(&s.unknown_labels) {
            *a += b;
        }
    }
    Some((all, summary))
}

/// One text to predict, with where it came from.
pub struct InputRecord {
    /// 1-based line where the record starts.
    pub line: usize,
    /// The record's `id` column, when the input has one.
    pub id: Option<String>,
    pub text: String,
}

/// The input file, or standard input for `-`.
pub fn open_input(path: &Path) -> Result<Box<dyn BufRead>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(BufReader::new(file)))
}

/// The texts `predict` was given, as plain lines or table records.
pub fn read_records(args: &PredictArgs) -> Result<Vec<InputRecord>> {
    let stdin = args.input.as_os_str() == "-";
    let source = if stdin {
        "<stdin>".to_string()
    } else {
        args.input.display().to_string()
    };
    let format = match args.format {
        Some(InputFormat::Text) => None,
        Some(InputFormat::Tsv) => Some(Format::Tsv),
        Some(InputFormat::Csv) => Some(Format::Csv),
        Some(InputFormat::Jsonl) => Some(Format::Jsonl),
        None if stdin => None,
        None => Format::from_path(&args.input),
    };
    let Some(format) = format else {
        return super::predict::read_lines(open_input(&args.input)?, &source);
    };
    let mut bytes = Vec::new();
    open_input(&args.input)?
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {source}"))?;
    let table = read_table_from(bytes.as_slice(), &source, format)?;
    let text_col = text_column_of(&table, &args.text_column)?;
    let id_col = table.columns.iter().position(|c| c == "id");
    Ok(table
        .rows
        .into_iter()
        .map(|row| InputRecord {
            line: row.line,
            id: id_col.and_then(|c| row.cell(c)).map(str::to_string),
            text: row.cell(text_col).unwrap_or_default().to_string(),
        })
        .collect())
}

/// Encodes a labelled table for an existing model: every row is kept (in
/// order); `tasks` must have their columns, other tasks are unlabelled.
pub fn encode_for_model(
    loaded: &LoadedModel,
    table: &Table,
    text_column: &str,
    tasks: &[String],
) -> Result<(Encoded, Summary)> {
    let vocab = Vocab::from_words(loaded.model.vocab.clone())
        .map_err(|e| anyhow::anyhow!("the model's vocabulary is not usable: {e}"))?;
    let maps: Vec<LabelMap> = loaded
        .model
        .config
        .tasks
        .iter()
        .map(|t| LabelMap {
            task: t.name.clone(),
            classes: t.classes.clone(),
        })
        .collect();
    let options = EncodeOptions {
        text_column,
        max_len: loaded.model.config.max_len,
        unseen: UnseenLabel::Count,
        training: false,
        required: tasks,
    };
    let column = text_column_of(table, text_column)?;
    let tokens = tokenize_column(table, column, &loaded.tokenizer);
    Ok(encode_table(table, &tokens, &maps, &vocab, &options)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per label, all of one task with known classes `a`, `b`.
    fn part(labels: &[i32], unseen: &[&str]) -> (Encoded, Summary) {
        let rows = labels.len();
        let encoded = Encoded {
            tokens: vec![2; rows],
            offsets: (0..=rows).collect(),
            labels: vec![labels.to_vec()],
            lines: (2..rows + 2).collect(),
            sources: vec![0; rows],
        };
        let summary = Summary {
            unknown_labels: vec![labels.iter().filter(|&&y| y >= 2).count()],
            unseen_labels: vec![unseen.iter().map(|s| s.to_string()).collect()],
            labelled: vec![labels.iter().filter(|&&y| y >= 0).count()],
            ..Summary::default()
        };
        (encoded, summary)
    }

    /// The second table's `so-so` (its index 2) is new to the split and
    /// becomes 3; its `meh` (its index 3) is the first table's 2.
    #[test]
    fn an_unseen_label_keeps_one_index_across_tables() {
        let maps = [LabelMap {
            task: "mood".to_string(),
            classes: vec!["a".to_string(), "b".to_string()],
        }];
        let first = part(&[0, 2, -1], &["meh"]);
        let second = part(&[2, 3, 1, 2], &["so-so", "meh"]);
        let (all, summary) = concatenate(vec![first, second], &maps).unwrap();
        assert_eq!(all.labels, vec![vec![0, 2, -1, 3, 2, 1, 3]]);
        assert_eq!(summary.unseen_labels, vec![vec!["meh", "so-so"]]);
        assert_eq!(summary.unknown_labels, vec![4]);
    }
}
