//! The `polyhead` command: parse the command line, run, map the outcome to
//! an exit code (0 success, 1 runtime error, 2 usage error).

use std::process::ExitCode;

use clap::Parser;

use polyhead::cli::{Cli, Command};
use polyhead::cmd::{self, UsageError};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version go to standard output, which can fail like
            // any other output.
            let printed = error
                .print()
                .map_err(|e| format!("cannot write to standard output: {e}"));
            let failed = printed.err().or_else(|| {
                let to_stdout = !error.use_stderr();
                cmd::stdout_error().filter(|_| to_stdout)
            });
            if let Some(failure) = failed {
                polyhead::say!("polyhead: {failure}");
                return ExitCode::from(1);
            }
            return ExitCode::from(error.exit_code().clamp(0, 255) as u8);
        }
    };
    let result = match cli.command {
        Command::Train(args) => cmd::train::run(&args),
        Command::Eval(args) => cmd::eval::run(&args),
        Command::Predict(args) => cmd::predict::run(&args),
        Command::Export(args) => {
            let format = match args.format {
                polyhead::cli::ExportFormatArg::Onnx => "onnx",
                polyhead::cli::ExportFormatArg::Torch => "torch",
            };
            polyhead::export::run_export(&args.model, format, &args.out)
        }
        Command::Bench(args) => cmd::bench::run(&args),
        Command::Compare(args) => cmd::compare::run(&args),
        Command::Report(args) => cmd::report::run(&args),
        Command::Info => cmd::info::run(),
    };
    let result = result.and_then(|()| match cmd::stdout_error() {
        Some(error) => Err(anyhow::anyhow!(error)),
        None => Ok(()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            polyhead::say!("polyhead: {}", cmd::one_line(&err));
            if err.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// A reader that closed the pipe (`polyhead predict ... | head`) is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
