//! From the command line's file arguments to encoded data: finding the
//! files, reading the tables, building the vocabulary and label lists.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::loaded::LoadedModel;
use crate::checkpoint::Fingerprint;
use crate::cli::{FormatArg, InputFormat, PredictArgs, TrainArgs};
use crate::data::dataset::{
    encode_table, label_maps, EncodeOptions, Encoded, LabelMap, Summary, UnseenLabel,
};
use crate::data::table::{read_table, read_table_from, Format, Table};
use crate::data::tokenizer::Tokenizer;
use crate::data::vocab::Vocab;
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

/// `DIR/train.*` etc.: the first existing file with a known extension.
fn find_split(dir: &Path, split: &str) -> Option<PathBuf> {
    ["tsv", "tab", "csv", "jsonl", "ndjson", "json"]
        .iter()
        .map(|ext| dir.join(format!("{split}.{ext}")))
        .find(|p| p.is_file())
}

/// Reads the training, validation and test tables the arguments name.
fn read_training_tables(args: &TrainArgs) -> Result<(Table, Option<Table>, Option<Table>)> {
    let format = format_of(args.format);
    let read = |path: &Path| -> Result<Table> { Ok(read_table(path, format)?) };
    if let Some(train) = &args.train {
        let valid = args.valid.as_deref().map(read).transpose()?;
        let test = args.test.as_deref().map(read).transpose()?;
        return Ok((read(train)?, valid, test));
    }
    match &args.data {
        Some(path) if path.is_dir() => {
            let Some(train) = find_split(path, "train") else {
                usage!(
                    "--data {}: no train.tsv, train.csv or train.jsonl in it",
                    path.display()
                );
            };
            let valid = find_split(path, "valid").map(|p| read(&p)).transpose()?;
            let test = find_split(path, "test").map(|p| read(&p)).transpose()?;
            Ok((read(&train)?, valid, test))
        }
        Some(path) if path.is_file() => Ok((read(path)?, None, None)),
        Some(path) => usage!("--data {}: no such file or folder", path.display()),
        None => {
            let embedded = |(name, text): (&str, &str)| -> Result<Table> {
                let source = format!("clothing-reviews/{name}.tsv (embedded)");
                Ok(read_table_from(text.as_bytes(), &source, Format::Tsv)?)
            };
            Ok((
                embedded(EMBEDDED[0])?,
                Some(embedded(EMBEDDED[1])?),
                Some(embedded(EMBEDDED[2])?),
            ))
        }
    }
}

pub fn prepare_training(args: &TrainArgs) -> Result<Prepared> {
    let (train, valid, test) = read_training_tables(args)?;
    let tokenizer = Tokenizer::default();
    let task_columns = match &args.tasks {
        Some(tasks) => tasks.clone(),
        None => train
            .columns
            .iter()
            .filter(|c| **c != args.text_column)
            .cloned()
            .collect(),
    };
    if task_columns.is_empty() {
        usage!(
            "{}: no task column besides the text column {:?}",
            train.source,
            args.text_column
        );
    }

    let vocab = Vocab::build(
        &train,
        &args.text_column,
        &tokenizer,
        args.min_count,
        args.vocab_size,
    )?;
    let maps = label_maps(&train, &task_columns)?;
    let mut options = EncodeOptions {
        text_column: &args.text_column,
        max_len: args.max_len,
        unseen: UnseenLabel::Error,
        training: true,
        required: &task_columns,
    };
    let (train_encoded, summary) = encode_table(&train, &maps, &vocab, &tokenizer, &options)?;
    let mut warnings = summary.warnings.clone();

    options.training = false;
    if args.allow_unseen_labels {
        options.unseen = UnseenLabel::Count;
    }
    let mut encode_other = |table: &Table| -> Result<Encoded> {
        let (encoded, s) = encode_table(table, &maps, &vocab, &tokenizer, &options)?;
        warnings.extend(s.warnings);
        Ok(encoded)
    };
    let valid_encoded = valid.as_ref().map(&mut encode_other).transpose()?;
    let test_encoded = test.as_ref().map(&mut encode_other).transpose()?;
    if valid.is_none() {
        warnings.push("no validation file: training without per-epoch scores".to_string());
    }

    let sources = [Some(&train), valid.as_ref(), test.as_ref()]
        .into_iter()
        .flatten()
        .map(|t| format!("{} ({} rows)", t.source, t.rows.len()))
        .collect();
    Ok(Prepared {
        train: train_encoded,
        valid: valid_encoded,
        test: test_encoded,
        vocab: vocab.words().to_vec(),
        tasks: maps.into_iter().map(|m| (m.task, m.classes)).collect(),
        warnings,
        summary,
        sources,
    })
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
    let Some(text_col) = table.columns.iter().position(|c| *c == args.text_column) else {
        usage!(
            "{source}: no column {:?} (columns: {}); choose one with --text-column",
            args.text_column,
            crate::data::vocab::column_list(&table.columns)
        );
    };
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
    Ok(encode_table(
        table,
        &maps,
        &vocab,
        &loaded.tokenizer,
        &options,
    )?)
}
