//! Compiles every `kernels/*.cu` to PTX and embeds it in the crate.
//!
//! Three paths, tried in order (DESIGN.md, "Building the kernels"):
//! 1. `nvcc`, found through `CUDA_HOME`, `CUDA_PATH` or `PATH`;
//! 2. NVRTC, when `libnvrtc` can be loaded (cudarc, dynamic loading);
//! 3. neither: only the sources are embedded, and the CUDA backend compiles
//!    them with NVRTC the first time a GPU is used.
//!
//! A machine without CUDA always builds. The sources are embedded on every
//! path (flattened: `#include "x.cuh"` of our own headers spliced in), so a
//! device older than every prebuilt PTX can still compile them at run time.
//! `POLYHEAD_CUDA_ARCH` lists the virtual architectures to build PTX for
//! (default `compute_80`, which the driver JIT-compiles for Ampere, Ada and
//! Hopper); `POLYHEAD_KERNEL_COMPILER=nvcc|nvrtc|none` forces one path.
//! The path taken is printed as one `cargo:warning` line and exported as
//! `POLYHEAD_KERNEL_BUILD` for `polyhead info`.

use std::collections::BTreeSet;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_ARCH: &str = "compute_80";

/// One kernel family: a `kernels/<name>.cu` file.
struct Family {
    name: String,
    /// Flattened source, written to `OUT_DIR/<name>.cu`.
    source: PathBuf,
}

fn main() {
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = root.join("kernels");

    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "POLYHEAD_CUDA_ARCH",
        "POLYHEAD_KERNEL_COMPILER",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "LD_LIBRARY_PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let families = flatten_sources(&kernel_dir, &out);
    let archs = match requested_archs() {
        Ok(archs) => archs,
        Err(message) => {
            println!("cargo:warning=polyhead kernels: {message}; using {DEFAULT_ARCH}");
            vec![80]
        }
    };
    let forced = env::var("POLYHEAD_KERNEL_COMPILER").unwrap_or_default();

    let mut notes = Vec::new();
    let mut built = None;
    if forced.is_empty() || forced == "nvcc" {
        match find_nvcc() {
            Some(nvcc) => match compile_with_nvcc(&nvcc, &families, &archs, &out) {
                Ok(version) => built = Some(format!("nvcc {version}")),
                Err(e) => notes.push(format!("nvcc failed: {e}")),
            },
            None => notes.push("no nvcc".to_string()),
        }
    }
    if built.is_none() && (forced.is_empty() || forced == "nvrtc") {
        match compile_with_nvrtc(&families, &archs, &out) {
            Ok(version) => built = Some(format!("nvrtc {version}")),
            Err(e) => notes.push(e),
        }
    }

    let arch_list = archs
        .iter()
        .map(|a| format!("compute_{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let (label, ptx_archs) = match built {
        Some(compiler) => (
            format!("ptx for {arch_list} by {compiler} at build time"),
            archs,
        ),
        None => {
            let why = if notes.is_empty() {
                format!("forced {forced}")
            } else {
                notes.join("; ")
            };
            (
                format!("sources only, NVRTC compiles them at first GPU use ({why})"),
                Vec::new(),
            )
        }
    };

    write_registry(&families, &ptx_archs, &label, &out);
    println!("cargo:rustc-env=POLYHEAD_KERNEL_BUILD={label}");
    println!("cargo:warning=polyhead kernels: {label}");
}

/// `POLYHEAD_CUDA_ARCH`: comma-separated `compute_XY`, `sm_XY` or `XY`.
fn requested_archs() -> Result<Vec<u32>, String> {
    let raw = env::var("POLYHEAD_CUDA_ARCH").unwrap_or_else(|_| DEFAULT_ARCH.to_string());
    let mut archs = BTreeSet::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let digits = part
            .trim_start_matches("compute_")
            .trim_start_matches("sm_");
        match digits.parse::<u32>() {
            Ok(n) if (50..=200).contains(&n) => {
                archs.insert(n);
            }
            _ => {
                return Err(format!(
                    "POLYHEAD_CUDA_ARCH entry {part:?} is not like compute_80"
                ))
            }
        }
    }
    if archs.is_empty() {
        return Err("POLYHEAD_CUDA_ARCH is empty".to_string());
    }
    Ok(archs.into_iter().collect())
}

/// Reads each `kernels/*.cu`, splices in the `kernels/*.cuh` it includes
/// (each once, like `#pragma once`), and writes the result to `OUT_DIR`.
fn flatten_sources(kernel_dir: &Path, out: &Path) -> Vec<Family> {
    let mut names: Vec<PathBuf> = fs::read_dir(kernel_dir)
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.sort();
    for path in &names {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    let mut families = Vec::new();
    for path in names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
    {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let mut seen = BTreeSet::new();
        let flat = flatten(path, kernel_dir, &mut seen);
        let source = out.join(format!("{name}.cu"));
        fs::write(&source, flat).unwrap_or_else(|e| panic!("writing {}: {e}", source.display()));
        families.push(Family { name, source });
    }
    families
}

fn flatten(path: &Path, kernel_dir: &Path, seen: &mut BTreeSet<String>) -> String {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed == "#pragma once" {
            continue;
        }
        let include = trimmed
            .strip_prefix("#include \"")
            .and_then(|rest| rest.strip_suffix('"'))
            .filter(|name| kernel_dir.join(name).is_file());
        match include {
            Some(name) => {
                if seen.insert(name.to_string()) {
                    let _ = writeln!(out, "// ---- begin {name}");
                    out.push_str(&flatten(&kernel_dir.join(name), kernel_dir, seen));
                    let _ = writeln!(out, "// ---- end {name}");
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn find_nvcc() -> Option<PathBuf> {
    let exe = if cfg!(windows) { "nvcc.exe" } else { "nvcc" };
    let mut candidates: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(env::var_os)
        .map(|dir| PathBuf::from(dir).join("bin").join(exe))
        .collect();
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|dir| dir.join(exe)));
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn compile_with_nvcc(
    nvcc: &Path,
    families: &[Family],
    archs: &[u32],
    out: &Path,
) -> Result<String, String> {
    let version = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", nvcc.display()))?;
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .filter_map(|l| l.split("release ").nth(1))
        .map(|v| v.split(',').next().unwrap_or(v).trim().to_string())
        .next()
        .unwrap_or_else(|| "(unknown version)".to_string());

    for family in families {
        for arch in archs {
            let ptx = out.join(format!("{}.{arch}.ptx", family.name));
            let result = Command::new(nvcc)
                .args(["--ptx", "-O3", "-std=c++17", "-lineinfo"])
                .arg(format!("-arch=compute_{arch}"))
                .arg("-o")
                .arg(&ptx)
                .arg(&family.source)
                .output()
                .map_err(|e| format!("{}: {e}", nvcc.display()))?;
            if !result.status.success() {
                return Err(format!(
                    "{}.cu for compute_{arch}: {}",
                    family.name,
                    first_lines(&String::from_utf8_lossy(&result.stderr))
                ));
            }
        }
    }
    Ok(version)
}

fn compile_with_nvrtc(families: &[Family], archs: &[u32], out: &Path) -> Result<String, String> {
    // cudarc panics when it cannot load libnvrtc, so probe first.
    // SAFETY: only tries to dlopen the library under its usual names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("no libnvrtc".to_string());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is loaded; nvrtcVersion writes two ints.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };

    for family in families {
        let source = fs::read_to_string(&family.source).map_err(|e| e.to_string())?;
        for arch in archs {
            let arch_flag: &'static str = Box::leak(format!("compute_{arch}").into_boxed_str());
            let options = cudarc::nvrtc::CompileOptions {
                arch: Some(arch_flag),
                options: vec!["--std=c++17".to_string(), "-lineinfo".to_string()],
                name: Some(format!("{}.cu", family.name)),
                ..Default::default()
            };
            let ptx = cudarc::nvrtc::compile_ptx_with_opts(&source, options).map_err(|e| {
                let log = match &e {
                    cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                        log.to_string_lossy().into_owned()
                    }
                    other => format!("{other:?}"),
                };
                format!(
                    "nvrtc failed on {}.cu for {arch_flag}: {}",
                    family.name,
                    first_lines(&log)
                )
            })?;
            let path = out.join(format!("{}.{arch}.ptx", family.name));
            fs::write(&path, ptx.to_src()).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(format!("{major}.{minor}"))
}

fn first_lines(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Writes `OUT_DIR/kernels.rs`: the embedded PTX and sources per family.
fn write_registry(families: &[Family], archs: &[u32], label: &str, out: &Path) {
    let mut code = String::new();
    let _ = writeln!(
        code,
        "/// How the kernels were built (also `POLYHEAD_KERNEL_BUILD`)."
    );
    let _ = writeln!(code, "pub const KERNEL_BUILD: &str = {label:?};");
    let _ = writeln!(code, "/// Every kernel family: `kernels/<name>.cu`.");
    let _ = writeln!(code, "pub static FAMILIES: &[EmbeddedFamily] = &[");
    for family in families {
        let _ = writeln!(code, "    EmbeddedFamily {{");
        let _ = writeln!(code, "        name: {:?},", family.name);
        let _ = writeln!(
            code,
            "        source: include_str!({:?}),",
            family.source.display().to_string()
        );
        let _ = writeln!(code, "        ptx: &[");
        for arch in archs {
            let ptx = out.join(format!("{}.{arch}.ptx", family.name));
            let _ = writeln!(
                code,
                "            ({arch}, include_str!({:?})),",
                ptx.display().to_string()
            );
        }
        let _ = writeln!(code, "        ],");
        let _ = writeln!(code, "    }},");
    }
    let _ = writeln!(code, "];");
    let path = out.join("kernels.rs");
    fs::write(&path, code).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
