//! The optimizer step on the device (global gradient norm, then clipped AdamW over the flat f32
//! parameter buffer in one launch, which also refreshes the T copy), and the parameters, gradients
//! and AdamW moments in and out of the engine in `train::optimizer::AdamW`'s names and format.

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use super::buffers::SCALAR_GNORM_SQ;
use super::buffers::SCALAR_LOSS;
use super::launcher::Launcher;
use super::{TrainEngine, ERR};
use crate::lora::Adapter;
use crate::{Context, Error, Result};

impl Launcher<'_> {
    /// gnorm^2 = sum of squared gradients; AdamW with clipping on every parameter (hyper uploaded).
    pub(super) fn optimizer(&self) -> Result<()> {
        let (p, k) = (self.ptrs, self.k);
        let n = self.layout.total;
        launch!(
            self,
            "sum_squares (grad norm)",
            k.sum_squares(p.grads, n, p.partials, p.scalar(SCALAR_GNORM_SQ))
        );
        let lowp = if self.t == DType::F32 { 0 } else { p.params_t };
        launch!(
            self,
            "adamw",
            k.adamw(
                p.params,
                p.grads,
                p.exp_avg,
                p.exp_avg_sq,
                lowp,
                p.hyper,
                p.scalar(SCALAR_GNORM_SQ),
                p.scalar(SCALAR_LOSS),
                n
            )
        );
        Ok(())
    }
}

impl TrainEngine {
    fn download(
        &self,
        which: &candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>,
        what: &str,
    ) -> Result<Vec<f32>> {
        let stream = self.kernels.stream();
        let out = stream
            .clone_dtoh(which)
            .map_err(|e| ERR.driver(&format!("reading {what}"), e))?;
        stream
            .synchronize()
            .map_err(|e| ERR.driver(&format!("reading {what}"), e))?;
        Ok(out)
    }

    /// The flat buffer's tensors as named tensors on the engine's device.
    fn named(&self, flat: &[f32], suffix: &str) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, offset, dims) in &self.vars {
            let len = dims[0] * dims[1];
            let t = Tensor::from_slice(
                &flat[*offset..*offset + len],
                (dims[0], dims[1]),
                &self.device,
            )
            .context(format!("{name}{suffix}"))?;
            out.insert(format!("{name}{suffix}"), t);
        }
        Ok(out)
    }

    /// Named tensors (`{var}{suffix}`, f32-convertible, [dims]) into a flat host buffer.
    fn flatten(
        &self,
        tensors: &HashMap<String, Tensor>,
        suffix: &str,
        what: &str,
    ) -> Result<Vec<f32>> {
        let mut flat = vec![0f32; self.layout.total];
        for (name, offset, dims) in &self.vars {
            let key = format!("{name}{suffix}");
            let t = tensors
                .get(&key)
                .ok_or_else(|| Error::InvalidRequest(format!("{what}: `{key}` is missing")))?;
            if t.dims() != dims {
                return Err(Error::InvalidRequest(format!(
                    "{what}: `{key}` has shape {:?}, expected {dims:?}",
                    t.dims()
                )));
            }
            let v: Vec<f32> = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .context(format!("reading {key}"))?;
            flat[*offset..*offset + v.len()].copy_from_slice(&v);
        }
        Ok(flat)
    }

    /// The adapter's variables (f32) -> the engine's master parameters and their T copy.
    pub fn load_params(&mut self, adapter: &Adapter) -> Result<()> {
        let tensors: HashMap<String, Tensor> = adapter
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        if tensors.len() != self.vars.len() {
            return Err(Error::InvalidRequest(format!(
                "CUDA training engine: the adapter has {} tensors, the engine was built for {}",
                tensors.len(),
                self.vars.len()
            )));
        }
        let flat = self.flatten(&tensors, "", "LoRA parameters")?;
        let stream = self.kernels.stream().clone();
        stream
            .memcpy_htod(&flat, &mut self.buffers.params)
            .map_err(|e| ERR.driver("uploading the LoRA parameters", e))?;
        if self.opts.dtype != DType::F32 {
            self.kernels
                .cast(self.ptrs.params, self.ptrs.params_t, self.layout.total)
                .map_err(ERR.launch("cast (LoRA parameters to T)"))?;
        }
        Ok(())
    }

    /// The engine's parameters -> the adapter's variables (before an evaluation or a save).
    pub fn store_params(&self, adapter: &Adapter) -> Result<()> {
        let flat = self.download(&self.buffers.params, "the LoRA parameters")?;
        let named = self.named(&flat, "")?;
        for (name, var) in adapter.vars() {
            let t = named.get(&name).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "CUDA training engine: the adapter's `{name}` is not one of the engine's"
                ))
            })?;
            let t = t
                .to_device(var.device())
                .context(format!("moving {name}"))?;
            var.set(&t).context(format!("setting {name}"))?;
        }
        Ok(())
    }

    /// The gradients accumulated since [`TrainEngine::begin_step`] (before clipping), by variable
    /// name (`{path}.lora_A`, `{path}.lora_B`), f32 on the engine's device. For checks.
    pub fn gradients(&self) -> Result<HashMap<String, Tensor>> {
        let flat = self.download(&self.buffers.grads, "the gradients")?;
        self.named(&flat, "")
    }

    /// The bf16 copy of the parameters that the products read (None when T is f32), as f32
    /// tensors by variable name. For checks: it must equal bf16(master) after every update.
    pub fn low_precision_params(&self) -> Result<Option<HashMap<String, Tensor>>> {
        let Some(copy) = &self.buffers.params_t else {
            return Ok(None);
        };
        let stream = self.kernels.stream();
        let bits = stream
            .clone_dtoh(copy)
            .map_err(|e| ERR.driver("reading the bf16 parameters", e))?;
        stream
            .synchronize()
            .map_err(|e| ERR.driver("reading the bf16 parameters", e))?;
        let flat: Vec<f32> = bits
            .into_iter()
            .map(|b| half::bf16::from_bits(b).to_f32())
            .collect();
        Ok(Some(self.named(&flat, "")?))
    }

    /// The loss accumulated since [`TrainEngine::begin_step`] (synchronises). For checks.
    pub fn accumulated_loss(&self) -> Result<f64> {
        let s = self.download(&self.buffers.scalars, "the loss")?;
        Ok(s[SCALAR_LOSS] as f64)
    }

    /// AdamW moments as `train::optimizer::AdamW::state_tensors` names them
    /// (`{var}.exp_avg`, `{var}.exp_avg_sq`), f32 on the engine's device.
    pub fn optimizer_state(&self) -> Result<HashMap<String, Tensor>> {
        let m = self.download(&self.buffers.exp_avg, "AdamW exp_avg")?;
        let v = self.download(&self.buffers.exp_avg_sq, "AdamW exp_avg_sq")?;
        let mut out = self.named(&m, ".exp_avg")?;
        out.extend(self.named(&v, ".exp_avg_sq")?);
        Ok(out)
    }

    /// Restores the moments saved by [`TrainEngine::optimizer_state`] (or by Candle's `AdamW`) and
    /// the number of updates already applied.
    pub fn load_optimizer_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: usize,
    ) -> Result<()> {
        let m = self.flatten(tensors, ".exp_avg", "optimizer state")?;
        let v = self.flatten(tensors, ".exp_avg_sq", "optimizer state")?;
        let stream = self.kernels.stream().clone();
        stream
            .memcpy_htod(&m, &mut self.buffers.exp_avg)
            .map_err(|e| ERR.driver("uploading AdamW exp_avg", e))?;
        stream
            .memcpy_htod(&v, &mut self.buffers.exp_avg_sq)
            .map_err(|e| ERR.driver("uploading AdamW exp_avg_sq", e))?;
        self.step = step;
        Ok(())
    }
}
