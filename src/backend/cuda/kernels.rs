//! The kernels embedded by `build.rs`, and their lazy loading per device.
//!
//! Each `kernels/<family>.cu` is one module. A module is loaded the first
//! time one of its kernels is launched: from the embedded PTX of the
//! highest virtual architecture the device can run, or, when there is none
//! (no nvcc or NVRTC at build time, or a device older than every PTX), by
//! compiling the embedded source with NVRTC for the device. Entry points
//! are named `<op>_<dtype>` (`adam_bf16`), so the host derives the name
//! from the precision.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

/// One `kernels/<name>.cu`: its flattened source and PTX per architecture.
pub struct EmbeddedFamily {
    pub name: &'static str,
    pub source: &'static str,
    /// (virtual architecture as `XY` of `compute_XY`, PTX text).
    pub ptx: &'static [(u32, &'static str)],
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The embedded PTX of `family` best suited to a device of `sm`: the
/// highest architecture not above it.
pub fn best_ptx(family: &EmbeddedFamily, sm: u32) -> Option<(u32, &'static str)> {
    family
        .ptx
        .iter()
        .copied()
        .filter(|(arch, _)| *arch <= sm)
        .max_by_key(|(arch, _)| *arch)
}

/// Whether a device of compute capability `sm` needs NVRTC at run time.
pub fn needs_runtime_compilation(sm: u32) -> bool {
    FAMILIES.iter().any(|family| best_ptx(family, sm).is_none())
}

/// Kernel modules and functions loaded so far on one device.
pub struct Kernels {
    ctx: Arc<CudaContext>,
    sm: u32,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: HashMap<String, CudaFunction>,
}

impl Kernels {
    pub fn new(ctx: Arc<CudaContext>, sm: u32) -> Kernels {
        Kernels {
            ctx,
            sm,
            modules: HashMap::new(),
            functions: HashMap::new(),
        }
    }

    /// Kernel `name` of `kernels/<family>.cu`, loading the module if needed.
    pub fn function(&mut self, family: &'static str, name: &str) -> Result<CudaFunction> {
        if let Some(function) = self.functions.get(name) {
            return Ok(function.clone());
        }
        let module = self.module(family)?;
        let function = module
            .load_function(name)
            .map_err(|e| anyhow!("kernel {name} missing from kernels/{family}.cu: {e:?}"))?;
        self.functions.insert(name.to_string(), function.clone());
        Ok(function)
    }

    fn module(&mut self, family: &'static str) -> Result<Arc<CudaModule>> {
        if let Some(module) = self.modules.get(family) {
            return Ok(module.clone());
        }
        let embedded = FAMILIES
            .iter()
            .find(|f| f.name == family)
            .ok_or_else(|| anyhow!("no kernel family {family} was embedded at build time"))?;
        let ptx = match best_ptx(embedded, self.sm) {
            Some((_, text)) => Ptx::from_src(text),
            None => compile_at_run_time(embedded, self.sm)?,
        };
        let module = self
            .ctx
            .load_module(ptx)
            .map_err(|e| anyhow!("loading kernels/{family}.cu on the device: {e:?}"))?;
        self.modules.insert(family, module.clone());
        Ok(module)
    }
}

fn compile_at_run_time(family: &EmbeddedFamily, sm: u32) -> Result<Ptx> {
    if !super::probe::nvrtc_present() {
        return Err(super::CudaUnavailable::NoNvrtc(KERNEL_BUILD.to_string()).into());
    }
    let arch: &'static str = Box::leak(format!("compute_{sm}").into_boxed_str());
    let options = CompileOptions {
        arch: Some(arch),
        options: vec!["--std=c++17".to_string()],
        name: Some(format!("{}.cu", family.name)),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(family.source, options)
        .map_err(|e| match e {
            CompileError::CompileError { log, .. } => {
                anyhow!("NVRTC: {}", log.to_string_lossy().trim())
            }
            other => anyhow!("NVRTC: {other:?}"),
        })
        .with_context(|| format!("compiling kernels/{}.cu for {arch}", family.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_file_is_embedded_with_its_entry_points() {
        let names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        for family in [
            "adam",
            "elementwise",
            "encoder_backward",
            "encoder_forward",
            "heads",
            "loss",
        ] {
            assert!(names.contains(&family), "{family} missing from {names:?}");
        }
        let forward = FAMILIES
            .iter()
            .find(|f| f.name == "encoder_forward")
            .unwrap();
        for entry in [
            "encoder_forward_bf16",
            "encoder_forward_f16",
            "encoder_forward_f32",
        ] {
            assert!(forward.source.contains(entry), "{entry}");
        }
        // Our own headers are spliced in, so NVRTC needs no include path.
        assert!(!forward.source.contains("#include \"common.cuh\""));
        assert!(forward.source.contains("namespace ph"));
        for family in FAMILIES {
            for (_, ptx) in family.ptx {
                assert!(
                    ptx.contains(".visible .entry"),
                    "{} PTX has no entry",
                    family.name
                );
            }
        }
    }

    #[test]
    fn ptx_choice_takes_the_highest_architecture_the_device_runs() {
        static FAMILY: EmbeddedFamily = EmbeddedFamily {
            name: "x",
            source: "",
            ptx: &[(80, "a"), (90, "b")],
        };
        assert_eq!(best_ptx(&FAMILY, 86), Some((80, "a")));
        assert_eq!(best_ptx(&FAMILY, 90), Some((90, "b")));
        assert_eq!(best_ptx(&FAMILY, 120), Some((90, "b")));
        assert_eq!(best_ptx(&FAMILY, 75), None);
        assert!(KERNEL_BUILD.contains("ptx") || KERNEL_BUILD.contains("sources"));
    }
}
