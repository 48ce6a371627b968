//! Launchers of the training-engine kernels (kernels/train_step.cu) on raw device pointers (`u64`,
//! 0 for "none"). The functions are resolved once for one activation dtype `T`
//! ([`TrainKernels::load`]); a launch costs one `cuLaunchKernel` on Candle's stream and records no
//! cudarc events, allocates nothing and never synchronizes, so a sequence of them can be captured
//! into a CUDA graph. Every pointer must stay valid until the stream has run the launch (the engine
//! owns its buffers for its whole life). Pointers named `T` hold the activation dtype; f32 ones are
//! named so. Launch configurations are in each doc comment; the maths in kernels/train_step.cu and
//! `super::reference`.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, DType};

use crate::gpu::kernels::{function, Module};

type Result<T> = candle_core::Result<T>;

/// Threads of the row kernels' blocks at most (rms_norm, cross_entropy).
const ROW_MAX_THREADS: usize = 1024;
/// 16-byte vectors per thread the row kernels keep in registers (RN_VPT in kernels/train_step.cu).
const ROW_VECS_PER_THREAD: usize = 4;
/// Threads of the elementwise (grid-stride) kernels' blocks.
const ELEMENTWISE_THREADS: u32 = 256;
/// Most blocks of a grid-stride launch: 16 blocks of 256 threads per SM of the H100's 132 keeps
/// every SM full; beyond, threads loop.
const MAX_GRID_BLOCKS: usize = 132 * 16;
/// Rows (warps) per block of the causal softmax kernels.
const SOFTMAX_WARPS: u32 = 8;
/// Threads of one cross-entropy block (one row of the vocabulary).
const CROSS_ENTROPY_THREADS: u32 = 512;
/// Threads of the single-block reductions (label_count, sum_into, sum_squares_final).
const REDUCE_THREADS: u32 = 1024;
/// Threads of a `sum_squares` partial block, and the elements each block covers at least.
const SUM_SQUARES_THREADS: u32 = 256;
const SUM_SQUARES_PER_BLOCK: usize = 256 * 16;
/// Most partial sums of `sum_squares` (4 blocks per SM of the H100).
const SUM_SQUARES_MAX_PARTIALS: usize = 132 * 4;

/// Floats of the `partials` scratch that [`TrainKernels::sum_squares`] needs for `n` elements
/// (also its number of blocks: a fixed function of `n`, so the reduction order is deterministic).
pub fn sum_squares_partials(n: usize) -> usize {
    n.div_ceil(SUM_SQUARES_PER_BLOCK)
        .clamp(1, SUM_SQUARES_MAX_PARTIALS)
}

/// The training kernels for one activation dtype, with the stream they launch on (Candle's).
pub struct TrainKernels {
    stream: Arc<CudaStream>,
    dtype: DType,
    embed: CudaFunction,
    rms_norm: CudaFunction,
    rms_norm_backward: CudaFunction,
    rope_scatter: CudaFunction,
    rope_gather_backward: CudaFunction,
    heads_to_tokens: CudaFunction,
    tokens_to_heads: CudaFunction,
    causal_softmax: CudaFunction,
    causal_softmax_backward: CudaFunction,
    swiglu: CudaFunction,
    swiglu_backward: CudaFunction,
    label_count: CudaFunction,
    cross_entropy: CudaFunction,
    sum_into: CudaFunction,
    sum_squares_partial: CudaFunction,
    sum_squares_final: CudaFunction,
    adamw: CudaFunction,
    cast: CudaFunction,
    add_bias: CudaFunction,
    lora_dropout: CudaFunction,
}

fn config(grid: usize, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.max(1) as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid-stride launch over `items` work items.
fn grid_stride(items: usize) -> LaunchConfig {
    config(
        items
            .div_ceil(ELEMENTWISE_THREADS as usize)
            .clamp(1, MAX_GRID_BLOCKS),
        ELEMENTWISE_THREADS,
    )
}

/// One block per row of `n` elements of `elem_bytes`: enough threads (a multiple of 32) that the
/// row's 16-byte vectors fit [`ROW_VECS_PER_THREAD`] per thread, at least one vector per thread
/// where the row allows it.
fn row_config(rows: usize, n: usize, elem_bytes: usize) -> LaunchConfig {
    let vecs = (n * elem_bytes).div_ceil(16);
    let threads = vecs
        .div_ceil(ROW_VECS_PER_THREAD)
        .max(vecs.min(256))
        .next_multiple_of(32)
        .clamp(32, ROW_MAX_THREADS);
    config(rows, threads as u32)
}

fn check_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| candle_core::Error::Msg(format!("{what} = {v} does not fit the kernel's int")))
}

fn check_heads(what: &str, heads: usize, kv_heads: usize, d: usize) -> Result<()> {
    if kv_heads == 0 || heads % kv_heads != 0 || d == 0 || d % 2 != 0 {
        return Err(candle_core::Error::Msg(format!(
            "{what}: {heads} heads, {kv_heads} kv heads, head dim {d} (heads must be a multiple of kv heads, the head dim even)"
        )));
    }
    Ok(())
}

impl TrainKernels {
    /// Resolves every training kernel for activation dtype `dtype` (F32, BF16 or F16) on `dev`.
    pub fn load(dev: &CudaDevice, dtype: DType) -> Result<Self> {
        let suffix = match dtype {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "training kernels: no {other:?} instantiation (f32, bf16, f16)"
                )))
            }
        };
        let typed = |name: &'static str| function(dev, Module::TrainStep, name, suffix);
        let plain = |name: &'static str| function(dev, Module::TrainStep, name, "");
        Ok(Self {
            stream: dev.cuda_stream(),
            dtype,
            embed: typed("trn_embed")?,
            rms_norm: typed("trn_rms_norm")?,
            rms_norm_backward: typed("trn_rms_norm_backward")?,
            rope_scatter: typed("trn_rope_scatter")?,
            rope_gather_backward: typed("trn_rope_gather_backward")?,
            heads_to_tokens: typed("trn_heads_to_tokens")?,
            tokens_to_heads: typed("trn_tokens_to_heads")?,
            causal_softmax: typed("trn_causal_softmax")?,
            causal_softmax_backward: typed("trn_causal_softmax_backward")?,
            swiglu: typed("trn_swiglu")?,
            swiglu_backward: typed("trn_swiglu_backward")?,
            label_count: plain("trn_label_count")?,
            cross_entropy: typed("trn_cross_entropy")?,
            sum_into: plain("trn_sum_into")?,
            sum_squares_partial: plain("trn_sum_squares_partial")?,
            sum_squares_final: plain("trn_sum_squares_final")?,
            adamw: typed("trn_adamw")?,
            cast: typed("trn_cast")?,
            add_bias: typed("trn_add_bias")?,
            lora_dropout: typed("trn_lora_dropout")?,
        })
    }

    /// The stream the kernels launch on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The activation dtype `T` the kernels were loaded for.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn elem_bytes(&self) -> usize {
        self.dtype.size_in_bytes()
    }

    /// x[t, :] = table[ids[t], :]. table: T [vocab, width]; ids: i32 [n] (each < vocab: not
    /// checked); x: T [n, width]. One block of up to 256 threads per row.
    pub fn embed(&self, table: u64, ids: u64, x: u64, n: usize, width: usize) -> Result<()> {
        let (n_i, w_i) = (
            check_i32("embed rows", n)?,
            check_i32("embed width", width)?,
        );
        let threads = (width * self.elem_bytes())
            .div_ceil(16)
            .next_multiple_of(32)
            .clamp(32, 256);
        let mut b = self.stream.launch_builder(&self.embed);
        b.arg(&table).arg(&ids).arg(&x).arg(&n_i).arg(&w_i);
        unsafe { b.launch(config(n, threads as u32)) }.w()?;
        Ok(())
    }

    /// r = rsqrt(mean(x^2) + eps), y = x r w, rstd[row] = r. x, y: T [rows, n]; w: T [n];
    /// rstd: f32 [rows]. One block per row (rows of 16-byte vectors held in registers).
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        x: u64,
        w: u64,
        y: u64,
        rstd: u64,
        rows: usize,
        n: usize,
        eps: f32,
    ) -> Result<()> {
        let (rows_i, n_i) = (
            check_i32("rms_norm rows", rows)?,
            check_i32("rms_norm n", n)?,
        );
        let mut b = self.stream.launch_builder(&self.rms_norm);
        b.arg(&x).arg(&w).arg(&y).arg(&rstd);
        b.arg(&rows_i).arg(&n_i).arg(&eps);
        unsafe { b.launch(row_config(rows, n, self.elem_bytes())) }.w()?;
        Ok(())
    }

    /// g = dy w, dx (+)= r (g - x r^2 mean(g x)) with r = rstd[row] (w frozen: no dw). x, dy, dx:
    /// T [rows, n]; w: T [n]; rstd: f32 [rows]. `accumulate` adds into dx; dx may be dy.
    /// One block per row.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_backward(
        &self,
        x: u64,
        w: u64,
        rstd: u64,
        dy: u64,
        dx: u64,
        rows: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        let (rows_i, n_i) = (
            check_i32("rms_norm rows", rows)?,
            check_i32("rms_norm n", n)?,
        );
        let acc = accumulate as i32;
        let mut b = self.stream.launch_builder(&self.rms_norm_backward);
        b.arg(&x).arg(&w).arg(&rstd).arg(&dy).arg(&dx);
        b.arg(&rows_i).arg(&n_i).arg(&acc);
        unsafe { b.launch(row_config(rows, n, self.elem_bytes())) }.w()?;
        Ok(())
    }

    /// Token-major q: T [N, heads*d], k, v: T [N, kv_heads*d] (N = b*s, token t = b_i*s + pos) ->
    /// head-major qh: [b, heads, s, d] (= [B, Hkv, G, S, d]), kh, vh: [b, kv_heads, s, d]; q and k
    /// rotated (HF rotate-half) at their position, v copied. cos, sin: f32 [>= s, d/2].
    /// Grid-stride over (token, head, 4 pairs).
    #[allow(clippy::too_many_arguments)]
    pub fn rope_scatter(
        &self,
        q: u64,
        k: u64,
        v: u64,
        cos: u64,
        sin: u64,
        qh: u64,
        kh: u64,
        vh: u64,
        b: usize,
        s: usize,
        heads: usize,
        kv_heads: usize,
        d: usize,
    ) -> Result<()> {
        self.rope(
            &self.rope_scatter,
            [q, k, v, cos, sin, qh, kh, vh],
            b,
            s,
            heads,
            kv_heads,
            d,
        )
    }

    /// The transpose of [`Self::rope_scatter`]: head-major gradients dqh [b, heads, s, d], dkh, dvh
    /// [b, kv_heads, s, d] -> token-major dq [N, heads*d], dk, dv [N, kv_heads*d], q and k rotated
    /// back (angle -theta).
    #[allow(clippy::too_many_arguments)]
    pub fn rope_gather_backward(
        &self,
        dqh: u64,
        dkh: u64,
        dvh: u64,
        cos: u64,
        sin: u64,
        dq: u64,
        dk: u64,
        dv: u64,
        b: usize,
        s: usize,
        heads: usize,
        kv_heads: usize,
        d: usize,
    ) -> Result<()> {
        self.rope(
            &self.rope_gather_backward,
            [dqh, dkh, dvh, cos, sin, dq, dk, dv],
            b,
            s,
            heads,
            kv_heads,
            d,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        f: &CudaFunction,
        ptrs: [u64; 8],
        b: usize,
        s: usize,
        heads: usize,
        kv_heads: usize,
        d: usize,
    ) -> Result<()> {
        check_heads("rope", heads, kv_heads, d)?;
        let pairs = if d % 8 == 0 { 4 } else { 1 };
        let items = b * s * (heads + 2 * kv_heads) * (d / 2 / pairs);
        let ints = [
            check_i32("rope batch", b)?,
            check_i32("rope seq", s)?,
            heads as i32,
            kv_heads as i32,
            d as i32,
        ];
        let mut l = self.stream.launch_builder(f);
        for p in &ptrs {
            l.arg(p);
        }
        for i in &ints {
            l.arg(i);
        }
        unsafe { l.launch(grid_stride(items)) }.w()?;
        Ok(())
    }

    /// oh: T [b, heads, s, d] (= [B, Hkv, G, S, d]) -> o: T [b*s, heads*d]. Grid-stride over
    /// 16-byte units.
    #[allow(clippy::too_many_arguments)]
    pub fn heads_to_tokens(
        &self,
        oh: u64,
        o: u64,
        b: usize,
        s: usize,
        heads: usize,
        kv_heads: usize,
        d: usize,
    ) -> Result<()> {
        self.permute(&self.heads_to_tokens, oh, o, b, s, heads, kv_heads, d)
    }

    /// The inverse of [`Self::heads_to_tokens`]: o [b*s, heads*d] -> oh [b, heads, s, d].
    #[allow(clippy::too_many_arguments)]
    pub fn tokens_to_heads(
        &self,
        o: u64,
        oh: u64,
        b: usize,
        s: usize,
        heads: usize,
        kv_heads: usize,
        d: usize,
    ) -> Result<()> {
        self.permute(&self.tokens_to_heads, o, oh, b, s, heads, kv_heads, d)
    }

    #[allow(clippy::too_many_arguments)]
    fn permute(
        &self,
        f: &CudaFunction,
        src: u64,
        dst: u64,
        b: usize,
        s: usize,
        heads: usize,
        kv_heads: usize,
        d: usize,
    ) -> Result<()> {
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(candle_core::Error::Msg(format!(
                "heads permute: {heads} heads are not a multiple of {kv_heads} kv heads"
            )));
        }
        let per_unit = 16 / self.elem_bytes();
        let unit = if d % per_unit == 0 { per_unit } else { 1 };
        let items = b * s * heads * d / unit;
        let ints = [
            check_i32("permute batch", b)?,
            check_i32("permute seq", s)?,
            heads as i32,
            kv_heads as i32,
            check_i32("head dim", d)?,
        ];
        let mut l = self.stream.launch_builder(f);
        l.arg(&src).arg(&dst);
        for i in &ints {
            l.arg(i);
        }
        unsafe { l.launch(grid_stride(items)) }.w()?;
        Ok(())
    }

    /// p[r, j] = softmax over j <= r % s of scale * scores[r, j], 0 for j > r % s. scores: f32
    /// [rows, s]; p: T [rows, s]; rows = B*Hkv*G*S. One warp per row, 8 rows per block.
    pub fn causal_softmax(
        &self,
        scores: u64,
        p: u64,
        rows: usize,
        s: usize,
        scale: f32,
    ) -> Result<()> {
        self.softmax_launch(&self.causal_softmax, [scores, p], rows, s, scale)
    }

    /// ds = scale * p * (dp - sum_j p dp) over j <= r % s, 0 beyond. p: T, dp: f32, ds: T, each
    /// [rows, s]. One warp per row, 8 rows per block.
    pub fn causal_softmax_backward(
        &self,
        p: u64,
        dp: u64,
        ds: u64,
        rows: usize,
        s: usize,
        scale: f32,
    ) -> Result<()> {
        let rows_i = check_i32("softmax rows", rows)?;
        let s_i = check_i32("softmax seq", s)?;
        let mut b = self.stream.launch_builder(&self.causal_softmax_backward);
        b.arg(&p)
            .arg(&dp)
            .arg(&ds)
            .arg(&rows_i)
            .arg(&s_i)
            .arg(&scale);
        unsafe { b.launch(Self::softmax_config(rows)) }.w()?;
        Ok(())
    }

    fn softmax_config(rows: usize) -> LaunchConfig {
        config(rows.div_ceil(SOFTMAX_WARPS as usize), SOFTMAX_WARPS * 32)
    }

    fn softmax_launch(
        &self,
        f: &CudaFunction,
        ptrs: [u64; 2],
        rows: usize,
        s: usize,
        scale: f32,
    ) -> Result<()> {
        let rows_i = check_i32("softmax rows", rows)?;
        let s_i = check_i32("softmax seq", s)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&ptrs[0])
            .arg(&ptrs[1])
            .arg(&rows_i)
            .arg(&s_i)
            .arg(&scale);
        unsafe { b.launch(Self::softmax_config(rows)) }.w()?;
        Ok(())
    }

    fn vector_items(&self, n: usize) -> usize {
        n.div_ceil(16 / self.elem_bytes())
    }

    /// y = silu(g) * u, elementwise over T [n]. Grid-stride over 16-byte vectors.
    pub fn swiglu(&self, g: u64, u: u64, y: u64, n: usize) -> Result<()> {
        let n64 = n as u64;
        let mut b = self.stream.launch_builder(&self.swiglu);
        b.arg(&g).arg(&u).arg(&y).arg(&n64);
        unsafe { b.launch(grid_stride(self.vector_items(n))) }.w()?;
        Ok(())
    }

    /// dg = dy u s (1 + g (1 - s)), du = dy g s with s = sigmoid(g), over T [n].
    pub fn swiglu_backward(
        &self,
        g: u64,
        u: u64,
        dy: u64,
        dg: u64,
        du: u64,
        n: usize,
    ) -> Result<()> {
        let n64 = n as u64;
        let mut b = self.stream.launch_builder(&self.swiglu_backward);
        b.arg(&g).arg(&u).arg(&dy).arg(&dg).arg(&du).arg(&n64);
        unsafe { b.launch(grid_stride(self.vector_items(n))) }.w()?;
        Ok(())
    }

    /// y [rows, cols] += bias [cols] in place (T; the sum in f32, rounded once). Grid-stride.
    pub fn add_bias(&self, y: u64, bias: u64, rows: usize, cols: usize) -> Result<()> {
        let cols_i = check_i32("bias width", cols)?;
        let rows64 = rows as u64;
        let mut b = self.stream.launch_builder(&self.add_bias);
        b.arg(&y).arg(&bias).arg(&rows64).arg(&cols_i);
        unsafe { b.launch(grid_stride(self.vector_items(rows * cols))) }.w()?;
        Ok(())
    }

    /// LoRA dropout: y [rows, cols] = x * keep / (1 - p) (`accumulate`: y += that), x and y in T,
    /// rows of `s` positions; the mask drawn from the u64 seed at `seed` and `stream` as
    /// `reference::lora_dropout` specifies. x and y must not overlap. Grid-stride.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_dropout(
        &self,
        x: u64,
        y: u64,
        (rows, cols, s): (usize, usize, usize),
        seed: u64,
        stream: u32,
        p: f32,
        accumulate: bool,
    ) -> Result<()> {
        let (cols_i, s_i) = (
            check_i32("dropout width", cols)?,
            check_i32("dropout positions", s)?,
        );
        if s == 0 || rows / s >= 1 << 20 || s > 1 << 20 || cols >= 1 << 24 {
            return Err(candle_core::Error::Msg(format!(
                "lora_dropout: {rows} rows of {s} positions x {cols} columns exceed the mask's key (rows / s and s < 2^20, columns < 2^24)"
            )));
        }
        let threshold = crate::reference::lora_dropout::threshold(p);
        let scale = crate::reference::lora_dropout::keep_scale(p);
        let (rows64, acc) = (rows as u64, i32::from(accumulate));
        let mut b = self.stream.launch_builder(&self.lora_dropout);
        b.arg(&x)
            .arg(&y)
            .arg(&rows64)
            .arg(&cols_i)
            .arg(&s_i)
            .arg(&seed);
        b.arg(&stream).arg(&threshold).arg(&scale).arg(&acc);
        unsafe { b.launch(grid_stride(rows * cols)) }.w()?;
        Ok(())
    }

    /// count (f32 scalar) = max(1, number of labels >= 0); labels: i32 [n]. One block.
    pub fn label_count(&self, labels: u64, n: usize, count: u64) -> Result<()> {
        let n_i = check_i32("label count", n)?;
        let mut b = self.stream.launch_builder(&self.label_count);
        b.arg(&labels).arg(&n_i).arg(&count);
        unsafe { b.launch(config(1, REDUCE_THREADS)) }.w()?;
        Ok(())
    }

    /// Cross-entropy in place: logits T [rows, vocab] become (softmax - onehot(label)) * k and
    /// row_loss f32 [rows] = (logsumexp - logit[label]) * k, k = scale[0] / count[0] (both f32
    /// scalars on the device); a label < 0 gives a zero row and loss 0, a label >= vocab a zero row
    /// and a NaN loss. labels: i32 [rows]. One block of 512 threads per row.
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy(
        &self,
        logits: u64,
        labels: u64,
        count: u64,
        scale: u64,
        row_loss: u64,
        rows: usize,
        vocab: usize,
    ) -> Result<()> {
        let rows_i = check_i32("cross-entropy rows", rows)?;
        let vocab_i = check_i32("vocab", vocab)?;
        let mut b = self.stream.launch_builder(&self.cross_entropy);
        b.arg(&logits)
            .arg(&labels)
            .arg(&count)
            .arg(&scale)
            .arg(&row_loss);
        b.arg(&rows_i).arg(&vocab_i);
        unsafe { b.launch(config(rows, CROSS_ENTROPY_THREADS)) }.w()?;
        Ok(())
    }

    /// out (f32 scalar) = (accumulate ? out : 0) + sum of x (f32 [n]); one block, fixed order.
    pub fn sum_into(&self, x: u64, n: usize, out: u64, accumulate: bool) -> Result<()> {
        let (n64, acc) = (n as u64, accumulate as i32);
        let mut b = self.stream.launch_builder(&self.sum_into);
        b.arg(&x).arg(&n64).arg(&out).arg(&acc);
        unsafe { b.launch(config(1, REDUCE_THREADS)) }.w()?;
        Ok(())
    }

    /// out (f32 scalar) = sum of x^2 over f32 x [n], deterministically: [`sum_squares_partials`]`(n)`
    /// blocks of 256 threads write one partial each into `partials` (f32, that many), then one block
    /// sums them.
    pub fn sum_squares(&self, x: u64, n: usize, partials: u64, out: u64) -> Result<()> {
        let parts = sum_squares_partials(n);
        let (n64, parts_i) = (n as u64, parts as i32);
        let mut b = self.stream.launch_builder(&self.sum_squares_partial);
        b.arg(&x).arg(&n64).arg(&partials);
        unsafe { b.launch(config(parts, SUM_SQUARES_THREADS)) }.w()?;
        let mut b = self.stream.launch_builder(&self.sum_squares_final);
        b.arg(&partials).arg(&parts_i).arg(&out);
        unsafe { b.launch(config(1, REDUCE_THREADS)) }.w()?;
        Ok(())
    }

    /// Clipped AdamW, exactly `train::optimizer::AdamW` after clipping: param, grad, m, v: f32 [n];
    /// param_lowp: T [n] or 0 (receives T(param)); hyper: f32 [10] = [lr, beta1, beta2, eps,
    /// weight_decay, 1 - beta1^t, 1 - beta2^t, max_norm (<= 0: no clipping), 1 - beta1, 1 - beta2]
    /// (`reference::adamw_hyper`); gnorm_sq, loss: f32
    /// scalars. g = grad * min(1, max_norm / (sqrt(gnorm_sq) + 1e-6)); nothing changes when
    /// gnorm_sq or loss[0] is not finite. Grid-stride over 4-element vectors.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &self,
        param: u64,
        grad: u64,
        m: u64,
        v: u64,
        param_lowp: u64,
        hyper: u64,
        gnorm_sq: u64,
        loss: u64,
        n: usize,
    ) -> Result<()> {
        let n64 = n as u64;
        let mut b = self.stream.launch_builder(&self.adamw);
        b.arg(&param).arg(&grad).arg(&m).arg(&v).arg(&param_lowp);
        b.arg(&hyper).arg(&gnorm_sq).arg(&loss).arg(&n64);
        unsafe { b.launch(grid_stride(n.div_ceil(4))) }.w()?;
        Ok(())
    }

    /// dst: T [n] = src: f32 [n]. Grid-stride over 4-element vectors.
    pub fn cast(&self, src_f32: u64, dst: u64, n: usize) -> Result<()> {
        let n64 = n as u64;
        let mut b = self.stream.launch_builder(&self.cast);
        b.arg(&src_f32).arg(&dst).arg(&n64);
        unsafe { b.launch(grid_stride(n.div_ceil(4))) }.w()?;
        Ok(())
    }
}
