//! Choosing the device a command runs on.

use candle_core::Device;

use crate::{Context, Error, Result};

/// Parses `cpu`, `cuda` or `cuda:N` (and `metal`, untested) into a Candle device.
pub fn parse_device(name: &str) -> Result<Device> {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "cpu" => Ok(Device::Cpu),
        "metal" => Device::new_metal(0).context("opening Metal device 0"),
        _ => {
            let ordinal = match lower.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| invalid_device(name))?,
                None => return Err(invalid_device(name)),
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::InvalidOption {
                    option: "--device".into(),
                    reason: format!(
                        "`{name}` asked for, but this wick was built without the `cuda` feature"
                    ),
                });
            }
            let device =
                Device::new_cuda(ordinal).context(format!("opening CUDA device {ordinal}"))?;
            // The per-op overhead cures (no per-buffer CUDA events on Candle's single stream, a
            // memory pool that keeps freed blocks, lean launches): see gpu::overhead.
            // WICK_CUDA_CURES=0 keeps Candle's defaults, for comparison.
            #[cfg(feature = "cuda")]
            if std::env::var("WICK_CUDA_CURES").map_or(true, |v| v != "0") {
                crate::gpu::overhead::apply_defaults(&device)?;
            }
            Ok(device)
        }
    }
}

fn invalid_device(name: &str) -> Error {
    Error::InvalidOption {
        option: "--device".into(),
        reason: format!("unknown device `{name}` (expected cpu, cuda, cuda:N or metal)"),
    }
}
