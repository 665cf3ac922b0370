//! Which vector instructions the CPU backend uses, chosen at run time.
//!
//! Binaries are built for plain x86-64 (never `target-cpu=native`) and run on
//! machines with and without AVX-512, so every hot loop exists in three
//! versions: AVX-512F, AVX2+FMA and portable scalar code. [`SimdPath::detect`]
//! picks the best one this CPU supports; `POLYHEAD_CPU_PATH=avx512|avx2|scalar`
//! forces one (tests use that to check every path on one machine).
//!
//! A [`SimdPath`] can only be made for instructions the CPU was seen to
//! have, which is what makes calling the `#[target_feature]` functions
//! behind it sound.

use anyhow::{bail, Result};

/// Environment variable that forces a code path.
pub const PATH_VAR: &str = "POLYHEAD_CPU_PATH";

/// A set of vector instructions the kernels are compiled for.
///
/// Only this module can make one, and only for instructions the CPU has:
/// holding a `SimdPath` is the proof that its kernels may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimdPath(Isa);

/// The instruction sets behind [`SimdPath`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: 16-lane registers, 32 of them.
    Avx512,
    /// AVX2 with FMA: 8-lane registers, 16 of them.
    Avx2Fma,
    /// Portable code; the compiler vectorises what it can for the baseline.
    Scalar,
}

impl Isa {
    const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2Fma, Isa::Scalar];

    fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Scalar => "scalar",
        }
    }
}

impl SimdPath {
    /// Portable code, available everywhere.
    pub const SCALAR: SimdPath = SimdPath(Isa::Scalar);

    /// The instruction set, for dispatch.
    pub fn isa(self) -> Isa {
        self.0
    }

    /// The name `polyhead info` prints and `POLYHEAD_CPU_PATH` accepts.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The fastest path this CPU supports.
    pub fn detect() -> SimdPath {
        SimdPath::available()[0]
    }

    /// Every path this CPU supports, fastest first (scalar is always last).
    pub fn available() -> Vec<SimdPath> {
        Isa::ALL
            .into_iter()
            .filter(|isa| isa.supported())
            .map(SimdPath)
            .collect()
    }

    /// Parses a path name (`avx512`, `avx2` or `avx2+fma`, `scalar`) and
    /// checks that this CPU supports it.
    pub fn parse(name: &str) -> Result<SimdPath> {
        let isa = match name.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx-512" | "avx512f" => Isa::Avx512,
            "avx2" | "avx2+fma" => Isa::Avx2Fma,
            "scalar" => Isa::Scalar,
            other => bail!("unknown CPU code path '{other}' (expected avx512, avx2 or scalar)"),
        };
        if !isa.supported() {
            bail!(
                "CPU code path {} is not supported by this processor",
                isa.name()
            );
        }
        Ok(SimdPath(isa))
    }

    /// The path forced by `POLYHEAD_CPU_PATH`, or the detected one when the
    /// variable is unset or empty.
    pub fn from_env() -> Result<SimdPath> {
        match std::env::var(PATH_VAR) {
            Ok(name) if !name.trim().is_empty() => {
                SimdPath::parse(&name).map_err(|e| anyhow::anyhow!("{PATH_VAR}: {e}"))
            }
            _ => Ok(SimdPath::detect()),
        }
    }
}

/// The name of the code path a new CPU backend uses on this machine
/// (`avx512`, `avx2+fma` or `scalar`), `POLYHEAD_CPU_PATH` included.
pub fn simd_path() -> &'static str {
    SimdPath::from_env()
        .unwrap_or_else(|_| SimdPath::detect())
        .name()
}

/// Defines `fn $name(path: SimdPath, args...)` that runs `$body` compiled
/// three times: for AVX-512F, for AVX2+FMA and for the baseline. The body
/// is plain Rust that the compiler vectorises for each instruction set, so
/// it suits loops that are simple enough to auto-vectorise (element-wise
/// updates, row additions). Helpers it calls must be `#[inline(always)]`
/// so they are compiled inside each version.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name(path: $crate::backend::cpu::simd::SimdPath, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            match path.isa() {
                #[cfg(target_arch = "x86_64")]
                $crate::backend::cpu::simd::Isa::Avx512 => {
                    // SAFETY: a SimdPath with Isa::Avx512 is only made where
                    // the CPU has avx512f, avx2 and fma.
                    unsafe { avx512($($arg),*) }
                }
                #[cfg(target_arch = "x86_64")]
                $crate::backend::cpu::simd::Isa::Avx2Fma => {
                    // SAFETY: a SimdPath with Isa::Avx2Fma is only made where
                    // the CPU has avx2 and fma.
                    unsafe { avx2($($arg),*) }
                }
                _ => body($($arg),*),
            }
        }
    };
}

pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for path in SimdPath::available() {
            assert_eq!(SimdPath::parse(path.name()).unwrap(), path);
        }
        assert_eq!(SimdPath::parse(" Scalar ").unwrap(), SimdPath::SCALAR);
        assert_eq!(*SimdPath::available().last().unwrap(), SimdPath::SCALAR);
    }

    #[test]
    fn unknown_names_are_refused_with_the_choices() {
        let err = SimdPath::parse("neon").unwrap_err().to_string();
        assert!(err.contains("'neon'") && err.contains("avx2"), "{err}");
    }

    #[test]
    fn detected_path_is_the_fastest_available() {
        assert_eq!(SimdPath::available()[0], SimdPath::detect());
    }
}
