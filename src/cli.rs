//! The command line, as the user types it (clap). Validation into the
//! settings the trainer uses happens in `cmd/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "polyhead",
    version,
    about = "Multi-task text classification: one CNN encoder, \
    one small head per task, trained together on the CPU or an NVIDIA GPU"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (default: the embedded clothing-reviews data set)
    Train(Box<TrainArgs>),
    /// Score a model on a labelled file: accuracy, macro-F1, per-class table, confusion matrix
    Eval(EvalArgs),
    /// Predict every task for each input line or record, one JSON object per line
    Predict(PredictArgs),
    /// Export a model for other runtimes: ONNX, or a PyTorch module in one Python file
    Export(ExportArgs),
    /// Time the fused operations and whole training steps on synthetic batches
    Bench(BenchArgs),
    /// Train one multi-task model and one single-task model per task over
    /// several seeds, and compare their validation (and test) scores
    #[command(
        mut_arg("out", |a| a.hide(true)),
        mut_arg("resume", |a| a.hide(true)),
        mut_arg("ckpt_dir", |a| a.hide(true)),
        mut_arg("keep_last", |a| a.hide(true)),
        mut_arg("checkpoint_every", |a| a.hide(true)),
        mut_arg("monitor", |a| a.hide(true)),
        mut_arg("early_stop_patience", |a| a.hide(true)),
        mut_arg("metrics_out", |a| a.hide(true))
    )]
    Compare(Box<CompareArgs>),
    /// Write a self-contained HTML page of a run's metrics, a model's
    /// per-class scores and a comparison
    Report(ReportArgs),
    /// Version, CPU features in use, threads, CUDA support and devices
    Info,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    Adam,
    LazyAdam,
}

impl OptimizerArg {
    pub fn name(self) -> &'static str {
        match self {
            OptimizerArg::Adam => "adam",
            OptimizerArg::LazyAdam => "lazy-adam",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Tsv,
    Csv,
    Jsonl,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Training table (TSV, CSV or JSON Lines); repeat it for data sets that
    /// label different tasks, as FILE (its columns name the tasks) or TASK=FILE
    #[arg(long, value_name = "[TASK=]FILE", conflicts_with = "data")]
    pub train: Vec<String>,
    /// Validation table(s), scored after every epoch; forms as for --train
    #[arg(
        long,
        value_name = "[TASK=]FILE",
        conflicts_with = "data",
        requires = "train"
    )]
    pub valid: Vec<String>,
    /// Test table(s), scored once at the end; forms as for --train
    #[arg(
        long,
        value_name = "[TASK=]FILE",
        conflicts_with = "data",
        requires = "train"
    )]
    pub test: Vec<String>,
    /// How batches mix the training files: proportional (to their size) or
    /// temperature:T (file i drawn with probability proportional to n_i^(1/T),
    /// so small data sets are seen more often)
    #[arg(long, default_value = "proportional", value_name = "MODE")]
    pub task_sampling: String,
    /// A folder holding train.*, valid.* and optionally test.*, or one training file
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Table format when the file extension does not tell
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Column holding the text
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_column: String,
    /// Task columns to train, comma-separated (default: every column but the text)
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub tasks: Option<Vec<String>>,
    /// Embedding width
    #[arg(long, default_value_t = 128, value_name = "D")]
    pub embed_dim: usize,
    /// Convolution filters
    #[arg(long, default_value_t = 128, value_name = "F")]
    pub filters: usize,
    /// Convolution width in tokens
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub kernel_size: usize,
    /// Hidden units of each task head
    #[arg(long, default_value_t = 128, value_name = "H")]
    pub hidden: usize,
    /// Texts are cut to this many tokens
    #[arg(long, default_value_t = 128, value_name = "TOKENS")]
    pub max_len: usize,
    /// Most words kept in the vocabulary (besides <pad> and <unk>), most frequent first
    #[arg(
        long,
        alias = "max-vocab",
        default_value_t = 50_000,
        value_name = "WORDS"
    )]
    pub vocab_size: usize,
    /// Words seen fewer times in training become <unk>
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub min_count: usize,
    /// Passes over the training data
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Texts per training step
    #[arg(long, default_value_t = 64, value_name = "ROWS")]
    pub batch_size: usize,
    /// Adam learning rate
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Optimiser: adam (PyTorch's), or lazy-adam, which updates an embedding
    /// row only in steps whose batch uses it: much faster with large
    /// vocabularies, and a different optimiser (TensorFlow's LazyAdam)
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adam)]
    pub optimizer: OptimizerArg,
    /// Seed of the initial weights, the shuffling and dropout
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CPU threads (default: all cores)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Dropout on the pooled features during training
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub dropout: f32,
    /// Where to write the model, model.safetensors by default (its resumable
    /// state goes beside it, as NAME.state.safetensors)
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Continue a run up to the same --epochs (the other options must match
    /// the run's): from the state saved beside MODEL_FILE, or from the newest
    /// valid checkpoint in a --ckpt-dir folder
    #[arg(long, value_name = "MODEL_FILE|DIR")]
    pub resume: Option<PathBuf>,
    /// Write each checkpoint as a new file in this folder (instead of one
    /// state file beside the model), keeping the newest --keep-last
    #[arg(long, value_name = "DIR")]
    pub ckpt_dir: Option<PathBuf>,
    /// How many checkpoints --ckpt-dir keeps, 3 by default (the newest, each
    /// read back before any older one is deleted)
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Also save the model and state every N steps, not only after each epoch
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Keep the best model by this validation metric: TASK:macro_f1, TASK:accuracy
    /// or valid_loss (the last epoch's state is still saved for resuming)
    #[arg(long, value_name = "TASK:METRIC")]
    pub monitor: Option<String>,
    /// Stop after N epochs without improvement of the --monitor metric
    /// (valid_loss when --monitor is not given)
    #[arg(long, value_name = "N")]
    pub early_stop_patience: Option<usize>,
    /// Loss weighting across tasks: equal, uncertainty, dwa, gradnorm, pcgrad, mgda-ub
    #[arg(long, default_value = "equal", value_name = "METHOD")]
    pub weighting: String,
    /// Weigh each class in its task's loss: `balanced` (every task), TASK=balanced
    /// (weight n / (classes * n_class)), or TASK:CLASS=W; repeatable
    #[arg(long, value_name = "SPEC")]
    pub class_weight: Vec<String>,
    /// Fixed weight per task's loss, e.g. topic=1,sentiment=0.5 (default 1 each)
    #[arg(long, value_delimiter = ',', value_name = "TASK=W")]
    pub task_weights: Vec<String>,
    /// Write one JSON line of metrics per epoch here
    #[arg(long, value_name = "FILE")]
    pub metrics_out: Option<PathBuf>,
    /// Count validation/test labels never seen in training as errors instead of stopping
    #[arg(long)]
    pub allow_unseen_labels: bool,
    /// Tokenise every table again, and keep nothing in the token cache
    /// (POLYHEAD_CACHE_DIR, default ~/.cache/polyhead)
    #[arg(long)]
    pub no_cache: bool,
    /// Print only errors and the final summary
    #[arg(long, short)]
    pub quiet: bool,
    /// Train on CUDA device N
    #[arg(long, value_name = "N")]
    pub gpu: Option<usize>,
    /// Arithmetic of the GPU encoder: fp32, bf16 or fp16 (master weights and
    /// Adam state stay fp32); default bf16 where the GPU has it
    #[arg(long, value_name = "P", requires = "gpu")]
    pub precision: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Model file written by `polyhead train`
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Labelled table to score
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Table format (default: from the extension)
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Tasks to score, comma-separated (default: all of the model's)
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub tasks: Option<Vec<String>>,
    /// Column holding the text (default: the one used in training)
    #[arg(long, value_name = "NAME")]
    pub text_column: Option<String>,
    /// Print one JSON object instead of tables
    #[arg(long)]
    pub json: bool,
    /// CPU threads (default: all cores)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// One text per line
    Text,
    Tsv,
    Csv,
    Jsonl,
}

#[derive(Args, Debug, Clone)]
pub struct PredictArgs {
    /// Model file written by `polyhead train`
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Input file, or - for standard input (default)
    #[arg(value_name = "FILE", default_value = "-")]
    pub input: PathBuf,
    /// Input format (default: from the extension; plain text lines otherwise)
    #[arg(long, value_enum)]
    pub format: Option<InputFormat>,
    /// Column holding the text, for table inputs
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_column: String,
    /// Also list the K most probable classes of each task
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Include the full probability vector of each task
    #[arg(long)]
    pub probs: bool,
    /// Include the tokens the model saw (unknown words as <unk>)
    #[arg(long)]
    pub explain_tokens: bool,
    /// CPU threads (default: all cores)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lengths {
    /// Every text fills the batch width
    Full,
    /// Lengths uniform in [kernel, max-len]
    Random,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Backend to time
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendArg,
    /// CUDA device, with --backend cuda
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// fp32, bf16 or fp16, with --backend cuda (default bf16 where the GPU has it)
    #[arg(long, value_name = "P")]
    pub precision: Option<String>,
    /// Texts per step
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Tokens per text
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    /// Embedding width D
    #[arg(long, default_value_t = 128)]
    pub embed_dim: usize,
    /// Convolution filters F
    #[arg(long, default_value_t = 128)]
    pub filters: usize,
    /// Convolution width k
    #[arg(long, default_value_t = 5)]
    pub kernel_size: usize,
    /// Hidden width H of each head
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    /// Vocabulary size V (token ids are drawn uniformly)
    #[arg(long, default_value_t = 30_000)]
    pub vocab_size: usize,
    /// Classes of each synthetic task, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "10,2")]
    pub classes: Vec<usize>,
    /// Text lengths
    #[arg(long, value_enum, default_value = "full")]
    pub lengths: Lengths,
    /// Untimed steps first
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Timed steps
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// CPU threads (default: all cores)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Seed of the weights and the synthetic batches
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Optimiser of the timed steps: adam (the peer's) or lazy-adam
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adam)]
    pub optimizer: OptimizerArg,
    /// Print one JSON line shaped like the PyTorch peer's bench output
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormatArg {
    /// An ONNX graph: input `tokens` int64 [batch, length], one probability output per task
    Onnx,
    /// A dependency-free Python file defining the PyTorch module and tokenizer
    Torch,
}

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Model file written by `polyhead train`
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Export format
    #[arg(long, value_enum)]
    pub format: ExportFormatArg,
    /// Output file (.onnx or .py); the vocabulary and labels go beside it as STEM.vocab.json
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The settings of every run; --seed is the first seed
    #[command(flatten)]
    pub train: TrainArgs,
    /// Seeds per arm: --seed, --seed + 1, ...
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub seeds: usize,
    /// Also write the comparison as JSON here (for `polyhead report --compare`)
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Per-epoch metrics, as written by `train --metrics-out`
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
    /// A trained model: its configuration, and with --data its per-class scores
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Labelled table to score with --model: per-class F1 and confusion matrices
    #[arg(long, value_name = "FILE", requires = "model")]
    pub data: Option<PathBuf>,
    /// Table format of --data when the extension does not tell
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Column of --data holding the text
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_column: String,
    /// A comparison, as written by `compare --json`
    #[arg(long, value_name = "FILE")]
    pub compare: Option<PathBuf>,
    /// Title of the page
    #[arg(long, default_value = "polyhead report")]
    pub title: String,
    /// Where to write the page
    #[arg(long, default_value = "report.html", value_name = "FILE")]
    pub out: PathBuf,
    /// CPU threads (default: all cores)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}
