//! wick's own CUDA kernels: the fatbins build.rs compiles from kernels/*.cu (sm_90 machine code plus
//! PTX), loaded once per device and cached with their functions, so a launch costs a hash lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaModule};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{DeviceId, WrapErr};
use candle_core::CudaDevice;

/// One kernels/*.cu file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Module {
    Softmax,
    RmsNorm,
    Rope,
    Swiglu,
    CrossEntropy,
    LoraLinear,
    DecodeAttention,
    QuantMatvec,
    DecodeStep,
    SmallMatmul,
    Prefill,
    TrainStep,
    FlashAttention,
    Dequant,
}

impl Module {
    fn image(self) -> &'static [u8] {
        match self {
            Module::Softmax => include_bytes!(concat!(env!("OUT_DIR"), "/softmax.fatbin")),
            Module::RmsNorm => include_bytes!(concat!(env!("OUT_DIR"), "/rms_norm.fatbin")),
            Module::Rope => include_bytes!(concat!(env!("OUT_DIR"), "/rope.fatbin")),
            Module::Swiglu => include_bytes!(concat!(env!("OUT_DIR"), "/swiglu.fatbin")),
            Module::CrossEntropy => {
                include_bytes!(concat!(env!("OUT_DIR"), "/cross_entropy.fatbin"))
            }
            Module::LoraLinear => include_bytes!(concat!(env!("OUT_DIR"), "/lora_linear.fatbin")),
            Module::DecodeAttention => {
                include_bytes!(concat!(env!("OUT_DIR"), "/decode_attention.fatbin"))
            }
            Module::QuantMatvec => {
                include_bytes!(concat!(env!("OUT_DIR"), "/quant_matvec.fatbin"))
            }
            Module::DecodeStep => include_bytes!(concat!(env!("OUT_DIR"), "/decode_step.fatbin")),
            Module::SmallMatmul => {
                include_bytes!(concat!(env!("OUT_DIR"), "/small_matmul.fatbin"))
            }
            Module::TrainStep => include_bytes!(concat!(env!("OUT_DIR"), "/train_step.fatbin")),
            Module::Prefill => include_bytes!(concat!(env!("OUT_DIR"), "/prefill.fatbin")),
            Module::FlashAttention => {
                include_bytes!(concat!(env!("OUT_DIR"), "/flash_attention.fatbin"))
            }
            Module::Dequant => include_bytes!(concat!(env!("OUT_DIR"), "/dequant.fatbin")),
        }
    }
}

type ModuleCache = HashMap<(DeviceId, Module), Arc<CudaModule>>;
/// Keyed by (device, module, kernel name, dtype suffix): no allocation on the hot path.
type FunctionCache = HashMap<(DeviceId, Module, &'static str, &'static str), CudaFunction>;

fn caches() -> &'static Mutex<(ModuleCache, FunctionCache)> {
    static CACHE: OnceLock<Mutex<(ModuleCache, FunctionCache)>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new((HashMap::new(), HashMap::new())))
}

/// The kernel `{name}_{suffix}` (or `name` alone for an empty suffix) of `module` on `dev`, loading
/// the module on first use.
pub fn function(
    dev: &CudaDevice,
    module: Module,
    name: &'static str,
    suffix: &'static str,
) -> candle_core::Result<CudaFunction> {
    let mut guard = caches()
        .lock()
        .map_err(|_| candle_core::Error::Msg("wick kernel cache poisoned".into()))?;
    let (modules, functions) = &mut *guard;
    let key = (dev.id(), module, name, suffix);
    if let Some(f) = functions.get(&key) {
        return Ok(f.clone());
    }
    let handle = match modules.get(&(dev.id(), module)) {
        Some(m) => m.clone(),
        None => {
            let m = dev
                .cuda_stream()
                .context()
                .load_module(Ptx::from_binary(module.image().to_vec()))
                .w()?;
            modules.insert((dev.id(), module), m.clone());
            m
        }
    };
    let full_name = if suffix.is_empty() {
        name.to_string()
    } else {
        format!("{name}_{suffix}")
    };
    let func = handle.load_function(&full_name).w()?;
    functions.insert(key, func.clone());
    Ok(func)
}
