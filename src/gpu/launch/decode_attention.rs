//! Launcher of decode attention (kernels/decode_attention.cu): one query token against the KV
//! cache, split over chunks of positions and combined.

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, DType, Layout};

use super::*;

/// Positions per block of the split pass of decode attention.
const DECODE_CHUNK: usize = 256;

launcher! {
    /// Decode attention for one query token: q [b, heads, 1, d], k/v [b, kv, T, d] (strided).
    pub fn decode_attention<T>(
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
        scale: f32,
    ) -> Result<CudaStorage> {
        let dev = &q.device;
        let (batch, heads, _, d) = ql.shape().dims4()?;
        let (_, kv_heads, len, _) = kl.shape().dims4()?;
        if d > 256 {
            candle_core::bail!("decode attention: head dim {d} > 256");
        }
        let chunks = len.div_ceil(DECODE_CHUNK).max(1);
        let mut scratch = unsafe { dev.alloc::<f32>(batch * heads * chunks * (d + 2))? };
        let mut out = alloc_out::<T>(dev, batch * heads * d)?;
        let stream = dev.cuda_stream();
        let (qv, kv, vv) = (view::<T>(q, ql)?, view::<T>(k, kl)?, view::<T>(v, vl)?);
        let (ks, vs) = (kl.stride(), vl.stride());
        let (heads_i, kv_i, len_i, d_i, chunk_i) = (
            heads as i32,
            kv_heads as i32,
            len as i32,
            d as i32,
            DECODE_CHUNK as i32,
        );
        let strides = [ks[0], ks[1], ks[2], vs[0], vs[1], vs[2]].map(|s| s as i64);
        let f = kernel::<T>(dev, Module::DecodeAttention, "decode_attention_split")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&qv).arg(&kv).arg(&vv).arg(&mut scratch);
        b.arg(&heads_i)
            .arg(&kv_i)
            .arg(&len_i)
            .arg(&d_i)
            .arg(&chunk_i);
        for s in &strides {
            b.arg(s);
        }
        b.arg(&scale);
        let cfg = config_2d(((batch * heads) as u32, chunks as u32), 128);
        unsafe { b.launch(cfg) }.w()?;
        let f = kernel::<T>(dev, Module::DecodeAttention, "decode_attention_merge")?;
        let mut b = stream.launch_builder(&f);
        let chunks_i = chunks as i32;
        b.arg(&scratch).arg(&mut out).arg(&chunks_i).arg(&d_i);
        let block = d.next_power_of_two().clamp(32, 256) as u32;
        let cfg = config((batch * heads) as u32, block);
        unsafe { b.launch(cfg) }.w()?;
        Ok(storage(dev, out))
    }
}
