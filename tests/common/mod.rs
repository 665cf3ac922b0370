//! Helpers for tests that run the `polyhead` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A fresh, empty folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("polyhead-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn case(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cases");
    let entry = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(name))
        .unwrap_or_else(|| panic!("no fixture {name}"));
    entry
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\n--- stderr\n{}\n---",
            self.stderr
        );
        self
    }

    pub fn fails(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}\n--- stderr\n{}\n---",
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "panic: {}", self.stderr);
        assert!(
            !self.stderr.contains("stack backtrace"),
            "backtrace: {}",
            self.stderr
        );
        self
    }
}

/// Runs `polyhead ARGS` in `dir` with `stdin` as standard input.
pub fn polyhead_in(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_polyhead"));
    command
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .env("POLYHEAD_CACHE_DIR", token_cache());
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("polyhead runs");
    if let Some(bytes) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// The token cache of every test run: under the build folder, never the
/// user's own cache.
pub fn token_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("token-cache")
}

pub fn polyhead(dir: &Path, args: &[&str]) -> Run {
    polyhead_in(dir, args, None)
}

/// Parses each stdout line as JSON.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The Python interpreter for cross-runtime checks, or `None` (with a
/// visible note) when it is not set up. With `POLYHEAD_REQUIRE_PYTHON=1`,
/// as in CI, a missing interpreter is a failure instead.
pub fn python(check: &str, modules: &[&str]) -> Option<PathBuf> {
    let required = std::env::var("POLYHEAD_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let python = std::env::var("POLYHEAD_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let probe = format!("import {}", modules.join(", "));
    let works = Command::new(&python)
        .args(["-c", &probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Some(PathBuf::from(python));
    }
    let reason = format!(
        "{check}: skipped: {python} cannot import {} (set POLYHEAD_PYTHON)",
        modules.join(", ")
    );
    assert!(!required, "{reason}, and POLYHEAD_REQUIRE_PYTHON=1");
    println!("{reason}");
    eprintln!("{reason}");
    None
}
