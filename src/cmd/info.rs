//! `polyhead info`: what this build and this machine offer.

use anyhow::Result;

pub fn run() -> Result<()> {
    crate::show!("polyhead {}", env!("CARGO_PKG_VERSION"));
    crate::show!(
        "cpu: {} threads, kernel path {}",
        rayon::current_num_threads(),
        crate::backend::cpu::simd_path()
    );
    crate::show!("cpu features: {}", cpu_features().join(" "));
    crate::show!("{}", crate::backend::cuda::describe_cuda());
    Ok(())
}

/// The SIMD extensions this CPU reports that the kernels can use.
pub fn cpu_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($name) {
                    found.push($name);
                }
            )*};
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512bf16",
            "avx512fp16"
        );
    }
    found
}
