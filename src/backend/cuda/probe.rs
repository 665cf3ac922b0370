//! Finding a usable CUDA device without ever panicking.
//!
//! cudarc loads `libcuda` and `libnvrtc` on first use and panics when one is
//! missing, so every question here is asked only after
//! `is_culib_present()` said the library loads, and the driver calls are
//! the plain `cuInit` / `cuDevice*` ones that every 12.x and 13.x driver
//! exports. Absence becomes a [`CudaUnavailable`] with a one-line message.

use std::panic::{self, AssertUnwindSafe};

use cudarc::driver::{result, sys, DriverError};

use super::kernels;

/// Compute capability the kernels need: bf16 `mma.sync`, `cp.async`.
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);
/// Oldest driver API the bindings target (cudarc's `cuda-12080` feature
/// calls nothing newer than 12.0 on our paths).
pub const MIN_DRIVER_VERSION: i32 = 12000;

/// Why the CUDA backend cannot run here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CudaUnavailable {
    #[error("no CUDA driver found (libcuda.so not loadable)")]
    NoDriver,
    #[error("the CUDA driver did not start: {0}")]
    DriverFailed(String),
    #[error("the CUDA driver is version {major}.{minor}; polyhead needs 12.0 or newer")]
    DriverTooOld { major: i32, minor: i32 },
    #[error("no CUDA device {requested} (found {found})")]
    NoDevice { requested: usize, found: usize },
    #[error(
        "CUDA device {ordinal} ({name}) has compute capability {major}.{minor}; \
         polyhead's kernels need 8.0 or newer"
    )]
    DeviceTooOld {
        ordinal: usize,
        name: String,
        major: i32,
        minor: i32,
    },
    #[error(
        "the kernels must be compiled at run time for this device ({0}), but NVRTC was not \
         found (libnvrtc.so not loadable; put the CUDA toolkit's lib64 on LD_LIBRARY_PATH)"
    )]
    NoNvrtc(String),
}

/// What the driver says about one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for Hopper.
    pub compute_capability: (i32, i32),
    /// (major, minor) of the CUDA version the driver supports, e.g. (13, 0).
    pub driver_version: (i32, i32),
    /// Devices the driver sees in all.
    pub device_count: usize,
    pub total_memory: usize,
    pub multiprocessors: i32,
    /// Largest dynamic shared memory one block may opt in to, in bytes.
    pub max_shared_per_block: i32,
}

impl DeviceInfo {
    /// `sm_XY` as one number (90 for 9.0).
    pub fn sm(&self) -> u32 {
        (self.compute_capability.0 * 10 + self.compute_capability.1) as u32
    }
}

/// The first CUDA device, if it can run polyhead's kernels.
pub fn probe() -> Result<DeviceInfo, CudaUnavailable> {
    probe_device(0)
}

/// CUDA device `ordinal`, if it can run polyhead's kernels: a driver that
/// loads and is new enough, the device, its compute capability, and NVRTC
/// when no embedded PTX suits the device. Never panics.
pub fn probe_device(ordinal: usize) -> Result<DeviceInfo, CudaUnavailable> {
    let info = query_device(ordinal)?;
    let (major, minor) = info.compute_capability;
    if (major, minor) < MIN_COMPUTE_CAPABILITY {
        return Err(CudaUnavailable::DeviceTooOld {
            ordinal,
            name: info.name,
            major,
            minor,
        });
    }
    if kernels::needs_runtime_compilation(info.sm()) && !nvrtc_present() {
        return Err(CudaUnavailable::NoNvrtc(kernels::KERNEL_BUILD.to_string()));
    }
    Ok(info)
}

/// Whether `libnvrtc` can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn driver_error(e: DriverError) -> CudaUnavailable {
    CudaUnavailable::DriverFailed(format!("{e:?}"))
}

/// Driver version, device count and the device's properties.
fn query_device(ordinal: usize) -> Result<DeviceInfo, CudaUnavailable> {
    // SAFETY: only tries to dlopen the library under its usual names.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaUnavailable::NoDriver);
    }
    // A driver whose library loads but lacks a symbol would make cudarc
    // panic; report that as a failed driver rather than unwind further.
    match panic::catch_unwind(AssertUnwindSafe(|| query_loaded_driver(ordinal))) {
        Ok(result) => result,
        Err(_) => Err(CudaUnavailable::DriverFailed(
            "libcuda.so lacks a function the CUDA 12 driver API has".to_string(),
        )),
    }
}

fn query_loaded_driver(ordinal: usize) -> Result<DeviceInfo, CudaUnavailable> {
    let mut version = 0;
    // SAFETY: the library is loaded; cuDriverGetVersion writes one int and
    // may be called before cuInit.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(driver_error)?;
    let driver_version = (version / 1000, (version % 1000) / 10);
    if version < MIN_DRIVER_VERSION {
        let (major, minor) = driver_version;
        return Err(CudaUnavailable::DriverTooOld { major, minor });
    }

    let found = match result::init() {
        Ok(()) => result::device::get_count().map_err(driver_error)? as usize,
        Err(DriverError(sys::cudaError_enum::CUDA_ERROR_NO_DEVICE)) => 0,
        Err(e) => return Err(driver_error(e)),
    };
    if ordinal >= found {
        return Err(CudaUnavailable::NoDevice {
            requested: ordinal,
            found,
        });
    }

    let device = result::device::get(ordinal as i32).map_err(driver_error)?;
    let attribute = |attribute| {
        // SAFETY: `device` came from cuDeviceGet above.
        unsafe { result::device::get_attribute(device, attribute) }.map_err(driver_error)
    };
    use sys::CUdevice_attribute as A;
    Ok(DeviceInfo {
        ordinal,
        name: result::device::get_name(device).map_err(driver_error)?,
        compute_capability: (
            attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ),
        driver_version,
        device_count: found,
        // SAFETY: `device` came from cuDeviceGet above.
        total_memory: unsafe { result::device::total_mem(device) }.map_err(driver_error)?,
        multiprocessors: attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        max_shared_per_block: attribute(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
    })
}

/// Lines for `polyhead info`: how the kernels were built, the driver, and
/// every device it sees (or why there is none).
pub fn describe_cuda() -> String {
    let mut lines = vec![format!("cuda kernels: {}", kernels::KERNEL_BUILD)];
    match query_device(0) {
        Ok(first) => {
            let (major, minor) = first.driver_version;
            lines.push(format!(
                "cuda driver: {major}.{minor}, {} device(s)",
                first.device_count
            ));
            for ordinal in 0..first.device_count {
                match query_device(ordinal) {
                    Ok(info) => {
                        lines.push(format!("cuda device {ordinal}: {}", describe_device(&info)))
                    }
                    Err(e) => lines.push(format!("cuda device {ordinal}: {e}")),
                }
            }
            if let Err(e) = probe_device(0) {
                lines.push(format!("cuda backend: unavailable ({e})"));
            }
        }
        Err(e) => lines.push(format!("cuda: {e}")),
    }
    lines.push(format!(
        "nvrtc: {}",
        if nvrtc_present() {
            "loadable"
        } else {
            "not found"
        }
    ));
    lines.join("\n")
}

/// `NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB)`.
pub fn describe_device(info: &DeviceInfo) -> String {
    format!(
        "{} (sm_{}, {} SMs, {:.1} GiB)",
        info.name,
        info.sm(),
        info.multiprocessors,
        info.total_memory as f64 / (1u64 << 30) as f64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_is_missing() {
        assert_eq!(
            CudaUnavailable::NoDriver.to_string(),
            "no CUDA driver found (libcuda.so not loadable)"
        );
        assert_eq!(
            CudaUnavailable::NoDevice {
                requested: 3,
                found: 1
            }
            .to_string(),
            "no CUDA device 3 (found 1)"
        );
        assert!(CudaUnavailable::NoNvrtc("x".into())
            .to_string()
            .contains("NVRTC was not found"));
    }

    #[test]
    fn probe_answers_without_panicking() {
        // Whatever this machine has, the probe returns; a missing driver or
        // device is an error value, not a panic.
        match probe_device(0) {
            Ok(info) => assert!(info.device_count >= 1 && info.sm() >= 80),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        match probe_device(9999) {
            Ok(_) => panic!("device 9999 cannot exist"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        assert!(describe_cuda().starts_with("cuda kernels: "));
    }
}
