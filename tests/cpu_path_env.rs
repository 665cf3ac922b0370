//! `POLYHEAD_CPU_PATH` chooses the CPU backend's code path. One test in its
//! own process, so setting the variable races with nothing.

use polyhead::backend::cpu::{simd_path, CpuBackend, SimdPath};

#[test]
fn the_environment_variable_forces_a_path() {
    // This is the only test of this binary: no other thread reads the
    // environment while it changes.
    std::env::set_var("POLYHEAD_CPU_PATH", "scalar");
    assert_eq!(CpuBackend::new().path(), SimdPath::SCALAR);
    assert_eq!(CpuBackend::try_new().unwrap().path(), SimdPath::SCALAR);
    assert_eq!(simd_path(), "scalar");

    for path in SimdPath::available() {
        std::env::set_var("POLYHEAD_CPU_PATH", path.name());
        assert_eq!(CpuBackend::try_new().unwrap().path(), path);
        assert_eq!(simd_path(), path.name());
    }
    std::env::set_var("POLYHEAD_CPU_PATH", "avx2");
    if let Some(avx2) = SimdPath::available()
        .into_iter()
        .find(|p| p.name() == "avx2+fma")
    {
        assert_eq!(CpuBackend::try_new().unwrap().path(), avx2);
    } else {
        let err = CpuBackend::try_new()
            .err()
            .expect("avx2 refused where missing")
            .to_string();
        assert!(err.contains("not supported by this processor"), "{err}");
    }

    std::env::set_var("POLYHEAD_CPU_PATH", "sse9");
    let err = CpuBackend::try_new()
        .err()
        .expect("an unknown path is refused")
        .to_string();
    assert!(
        err.contains("POLYHEAD_CPU_PATH") && err.contains("'sse9'"),
        "{err}"
    );
    // `new` falls back to the fastest path (and says so on stderr).
    assert_eq!(CpuBackend::new().path(), SimdPath::detect());
    assert_eq!(simd_path(), SimdPath::detect().name());

    std::env::set_var("POLYHEAD_CPU_PATH", "");
    assert_eq!(CpuBackend::try_new().unwrap().path(), SimdPath::detect());
    std::env::remove_var("POLYHEAD_CPU_PATH");
    assert_eq!(CpuBackend::try_new().unwrap().path(), SimdPath::detect());
}
