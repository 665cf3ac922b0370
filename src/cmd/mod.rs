//! The subcommands. Each turns what the user typed into validated settings,
//! runs, and reports.

pub mod bench;
pub mod compare;
pub mod data;
pub mod eval;
pub mod info;
pub mod loaded;
pub mod predict;
pub mod report;
pub mod train;

use std::fmt;

/// A mistake in how the command was called (exit code 2), as opposed to a
/// failure while running (exit code 1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Fails with a [`UsageError`].
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::cmd::UsageError(format!($($arg)*))))
    };
}

/// `eprintln!` that cannot fail: a closed stderr (`polyhead train 2>&1 |
/// head -1`) must not stop a run that is writing files.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` for reports: a reader that closed the pipe has seen all it
/// wanted, so that is no error; any other failure (a full disk) is kept
/// for [`stdout_error`], which turns a run that lost its output into a
/// failure instead of a silent success.
#[macro_export]
macro_rules! show {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::cmd::stdout_failed(error);
        }
    }};
}

static STDOUT_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Writes `text` to standard output as [`show!`] does, without a newline.
pub fn show_text(text: &str) {
    use std::io::Write as _;
    if let Err(error) = std::io::stdout().write_all(text.as_bytes()) {
        stdout_failed(error);
    }
}

/// Records the first failure to write standard output, unless it is a
/// closed pipe.
pub fn stdout_failed(error: std::io::Error) {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        return;
    }
    let mut first = STDOUT_ERROR.lock().unwrap_or_else(|e| e.into_inner());
    first.get_or_insert_with(|| error.to_string());
}

/// Flushes standard output and returns the first failure to write it, as
/// one line, if there was one that matters.
pub fn stdout_error() -> Option<String> {
    use std::io::Write as _;
    if let Err(error) = std::io::stdout().flush() {
        stdout_failed(error);
    }
    let first = STDOUT_ERROR.lock().unwrap_or_else(|e| e.into_inner());
    first
        .as_ref()
        .map(|e| format!("cannot write to standard output: {e}"))
}

/// `1 epoch`, `2 epochs`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The error and its causes on one line: `outer: inner: innermost`.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// Sets the number of CPU threads for the whole process (default: all cores).
pub fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    // Far past any machine's cores, a pool only costs: thousands of threads
    // take seconds to start before any work.
    const MAX_THREADS: usize = 1024;
    match threads {
        Some(0) => usage!("--threads must be at least 1"),
        Some(n) if n > MAX_THREADS => usage!("--threads must be at most {MAX_THREADS}, got {n}"),
        _ => {}
    }
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // A second call (tests running commands in one process) keeps the first pool.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(())
}
