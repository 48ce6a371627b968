//! cuBLASLt matrix products with cached plans.
//!
//! One cuBLASLt handle and one workspace per device, created on first use and kept for the process;
//! per (dtype, shape, weight layout, bias) one matmul descriptor, three matrix layouts and the
//! algorithm the heuristic chose, built once and reused. cudarc's `Matmul::matmul` builds and
//! destroys all of those on every call (six object creations and a heuristic query each time),
//! which is the per-call overhead this module exists to remove.
//!
//! Maths, row-major as Candle stores tensors, with x: [m, k] and w: [n, k] (a Linear weight):
//!   y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n])            (`WeightLayout::OutIn`, y = x W^T)
//! or with w: [k, n]:
//!   y[m, n] = sum_k x[m, k] * w[k, n] (+ bias[n])            (`WeightLayout::InOut`, y = x W)
//! cuBLASLt is column-major, and a row-major [r, c] matrix is the column-major [c, r] one. So the
//! row-major y = x W^T is the column-major y^T = W x^T: Lt's A is w (column-major [k, n], transposed
//! for OutIn; column-major [n, k], not transposed, for InOut), Lt's B is x (column-major [k, m]),
//! and D is y (column-major [n, m], ld n). The bias epilogue adds bias[row of D] = bias[n]. Leading
//! dimensions of x are folded into m, so x: [.., k] contiguous gives y: [.., n].
//!
//! Accumulation is f32 for every dtype (CUBLAS_COMPUTE_32F: no TF32 for f32 inputs, so an f32
//! product matches Candle's and an f64 reference to f32 rounding).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublaslt::{result as lt, sys};
use candle_core::cuda_backend::cudarc::driver::{
    sys::CUdeviceptr, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape, Tensor};

/// How a weight matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// w: [n, k] (out_features, in_features): PyTorch's and Candle's Linear weight; y = x W^T.
    OutIn,
    /// w: [k, n]: y = x W.
    InOut,
}

/// What identifies a plan: everything the descriptor, the layouts and the heuristic depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    dtype: DType,
    m: u64,
    n: u64,
    k: u64,
    weight: WeightLayout,
    bias: bool,
}

/// A descriptor, the layouts of A (the weight), B (x) and D (y), and the chosen algorithm.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    info: PlanInfo,
}

/// What the heuristic chose for a plan (cuBLASLt's algorithm configuration attributes), for the
/// benchmarks: a split-k above 1 or a reduction scheme other than 0 means more than one kernel or
/// a workspace pass per product.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PlanInfo {
    /// CUBLASLT_ALGO_CONFIG_ID.
    pub algo_id: u32,
    /// CUBLASLT_ALGO_CONFIG_TILE_ID (cublasLtMatmulTile_t).
    pub tile_id: u32,
    /// CUBLASLT_ALGO_CONFIG_SPLITK_NUM (1 = no split-k).
    pub split_k: u32,
    /// CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME (0 = none).
    pub reduction_scheme: u32,
    /// Workspace the algorithm needs, bytes.
    pub workspace_bytes: usize,
    /// The heuristic's estimate of waves (blocks / (SMs x blocks per SM)).
    pub waves: f32,
}

/// Reads one u32 algorithm configuration attribute (0 if cuBLASLt does not report it).
pub(crate) fn algo_attribute(
    algo: &sys::cublasLtMatmulAlgo_t,
    attr: sys::cublasLtMatmulAlgoConfigAttributes_t,
) -> u32 {
    let mut value = 0u32;
    let mut written = 0usize;
    // SAFETY: the buffer is a live u32 and its size is passed; every attribute read here is 32-bit.
    let status = unsafe {
        sys::cublasLtMatmulAlgoConfigGetAttribute(
            algo,
            attr,
            (&mut value) as *mut u32 as *mut _,
            std::mem::size_of::<u32>(),
            &mut written,
        )
    };
    if status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        value
    } else {
        0
    }
}

// SAFETY: the handles are plain descriptors that cuBLASLt allows to be used from any thread; a plan
// is only read after creation except for the bias pointer, which is written under `LtContext::plans`.
unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by this plan and is destroyed once. Failures cannot be
        // reported from drop and leak at most one descriptor.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.d);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// One device's cuBLASLt handle, workspace, and plan cache.
pub struct LtContext {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    plans: Mutex<HashMap<PlanKey, Arc<Plan>>>,
}

// SAFETY: a cuBLASLt handle may be shared between threads as long as calls that use it are not
// reconfiguring it; wick only passes it to cublasLtMatmul and the heuristic query.
unsafe impl Send for LtContext {}
unsafe impl Sync for LtContext {}

impl Drop for LtContext {
    fn drop(&mut self) {
        if let Ok(mut plans) = self.plans.lock() {
            plans.clear();
        }
        // SAFETY: the handle was created in `LtContext::new` and is destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// cuBLASLt's recommended workspace on Hopper (32 MiB; 4 MiB suffices on older GPUs).
pub(crate) const WORKSPACE_BYTES: usize = 32 << 20;

pub(crate) fn cuda_err(what: &str, err: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Cuda(format!("cuBLASLt {what}: {err:?}").into())
}

impl LtContext {
    fn new(device: &CudaDevice) -> candle_core::Result<Self> {
        let stream = device.cuda_stream();
        let handle = lt::create_handle().map_err(|e| cuda_err("create handle", e))?;
        // SAFETY: the workspace is only handed to cuBLASLt as scratch memory.
        let workspace = unsafe { stream.alloc::<u8>(WORKSPACE_BYTES) }
            .map_err(|e| cuda_err("allocate workspace", e))?;
        Ok(Self {
            handle,
            workspace,
            stream,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// The context of `device`, created on first use.
    pub fn for_device(device: &CudaDevice) -> candle_core::Result<Arc<LtContext>> {
        static CONTEXTS: OnceLock<Mutex<HashMap<DeviceId, Arc<LtContext>>>> = OnceLock::new();
        let contexts = CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()));
        let mut contexts = contexts
            .lock()
            .map_err(|_| cuda_err("context registry", "poisoned lock"))?;
        if let Some(ctx) = contexts.get(&device.id()) {
            return Ok(ctx.clone());
        }
        let ctx = Arc::new(LtContext::new(device)?);
        contexts.insert(device.id(), ctx.clone());
        Ok(ctx)
    }

    /// What the heuristic chose for y = x W^T, x: [m, k], W: [n, k] (`OutIn`) in `dtype`, building
    /// the plan if it is not cached.
    pub fn plan_info(
        &self,
        dtype: DType,
        (m, n, k): (usize, usize, usize),
        bias: bool,
    ) -> candle_core::Result<PlanInfo> {
        let key = PlanKey {
            dtype,
            m: m as u64,
            n: n as u64,
            k: k as u64,
            weight: WeightLayout::OutIn,
            bias,
        };
        Ok(self.plan(key)?.info)
    }

    /// The cuBLASLt handle (for `gpu::gemm`, which shares it and the workspace).
    pub(crate) fn handle(&self) -> sys::cublasLtHandle_t {
        self.handle
    }

    /// The workspace ([`WORKSPACE_BYTES`]) and the stream every product of this context runs on;
    /// products that share the workspace must stay on that one stream.
    pub(crate) fn workspace(&self) -> (&CudaSlice<u8>, &Arc<CudaStream>) {
        (&self.workspace, &self.stream)
    }

    /// How many plans are cached (for tests and the dispatch benchmark).
    pub fn cached_plans(&self) -> usize {
        self.plans.lock().map(|p| p.len()).unwrap_or(0)
    }

    fn plan(&self, key: PlanKey) -> candle_core::Result<Arc<Plan>> {
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| cuda_err("plan cache", "poisoned lock"))?;
        if let Some(plan) = plans.get(&key) {
            return Ok(plan.clone());
        }
        let plan = Arc::new(self.build_plan(key)?);
        plans.insert(key, plan.clone());
        tracing::debug!(?key, "cuBLASLt plan built");
        Ok(plan)
    }

    fn build_plan(&self, key: PlanKey) -> candle_core::Result<Plan> {
        let data_type = lt_data_type(key.dtype)?;
        let PlanKey { m, n, k, .. } = key;
        // A = w (see the module comment), B = x as column-major [k, m], D = y as column-major [n, m].
        let (a_rows, a_cols, a_ld, transa) = match key.weight {
            WeightLayout::OutIn => (k, n, k as i64, 1i32),
            WeightLayout::InOut => (n, k, n as i64, 0i32),
        };
        let a = lt::create_matrix_layout(data_type, a_rows, a_cols, a_ld)
            .map_err(|e| cuda_err("layout A", e))?;
        let b = lt::create_matrix_layout(data_type, k, m, k as i64);
        let d = lt::create_matrix_layout(data_type, n, m, n as i64);
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        );
        // Build the plan before checking the rest, so Drop frees whatever was created.
        let (b, d, desc) = match (b, d, desc) {
            (Ok(b), Ok(d), Ok(desc)) => (b, d, desc),
            (b, d, desc) => {
                // SAFETY: only handles that were created are destroyed.
                unsafe {
                    let _ = lt::destroy_matrix_layout(a);
                    if let Ok(b) = b {
                        let _ = lt::destroy_matrix_layout(b);
                    }
                    if let Ok(d) = d {
                        let _ = lt::destroy_matrix_layout(d);
                    }
                    if let Ok(desc) = desc {
                        let _ = lt::destroy_matmul_desc(desc);
                    }
                }
                return Err(cuda_err("create layouts", "B, D or the descriptor failed"));
            }
        };
        let mut plan = Plan {
            desc,
            a,
            b,
            d,
            // SAFETY: an all-zero algo is a valid placeholder; it is overwritten below.
            algo: unsafe { std::mem::zeroed() },
            info: PlanInfo::default(),
        };
        let no_transpose = 0i32;
        let epilogue = if key.bias {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
        } else {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT
        };
        let preference = lt::create_matmul_pref().map_err(|e| cuda_err("preference", e))?;
        // SAFETY: every pointer passed points at a live value of the size given.
        let heuristic = unsafe {
            let result = (|| {
                set_desc(plan.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &transa)?;
                set_desc(plan.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, &no_transpose)?;
                set_desc(plan.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
                if key.bias {
                    // The heuristic needs the bias type; the pointer is set per call.
                    set_desc(plan.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &data_type)?;
                }
                let workspace = WORKSPACE_BYTES;
                lt::set_matmul_pref_attribute(
                    preference,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&workspace) as *const usize as *const _,
                    std::mem::size_of::<usize>(),
                )?;
                lt::get_matmul_algo_heuristic(self.handle, plan.desc, plan.a, plan.b, plan.d, plan.d, preference)
            })();
            let _ = lt::destroy_matmul_pref(preference);
            result
        }
        .map_err(|e| cuda_err(&format!("heuristic for {key:?}"), e))?;
        plan.algo = heuristic.algo;
        use sys::cublasLtMatmulAlgoConfigAttributes_t as A;
        plan.info = PlanInfo {
            algo_id: algo_attribute(&plan.algo, A::CUBLASLT_ALGO_CONFIG_ID),
            tile_id: algo_attribute(&plan.algo, A::CUBLASLT_ALGO_CONFIG_TILE_ID),
            split_k: algo_attribute(&plan.algo, A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
            reduction_scheme: algo_attribute(&plan.algo, A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
            workspace_bytes: heuristic.workspaceSize,
            waves: heuristic.wavesCount,
        };
        tracing::debug!(?key, info = ?plan.info, "cuBLASLt heuristic");
        Ok(plan)
    }
}

/// Sets one matmul descriptor attribute from a value.
///
/// # Safety
/// `desc` must be a live descriptor and `T` the attribute's C type.
pub(crate) unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<(), lt::CublasError> {
    lt::set_matmul_desc_attribute(
        desc,
        attr,
        value as *const T as *const _,
        std::mem::size_of::<T>(),
    )
}

pub(crate) fn lt_data_type(dtype: DType) -> candle_core::Result<sys::cudaDataType> {
    Ok(match dtype {
        DType::F32 => sys::cudaDataType_t::CUDA_R_32F,
        DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType_t::CUDA_R_16F,
        other => {
            return Err(candle_core::Error::UnsupportedDTypeForOp(
                other,
                "cublaslt matmul",
            ))
        }
    })
}

/// y = x W^T (or x W) (+ bias) through cuBLASLt with a cached plan; CUDA tensors only.
///
/// x: [.., k] contiguous; w: [n, k] for `OutIn`, [k, n] for `InOut`, contiguous; bias: [n];
/// all of one dtype (f32, bf16 or f16). Returns y: [.., n].
pub fn matmul(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    weight: WeightLayout,
) -> candle_core::Result<Tensor> {
    let op = LtMatmul { weight };
    match bias {
        None => x.apply_op2_no_bwd(w, &op),
        Some(bias) => x.apply_op3_no_bwd(w, bias, &op),
    }
}

/// y = x W^T (or x W), written into an existing y: [.., n] (contiguous; same dtype). Launches no
/// allocation and no copy, so it can be captured in a CUDA graph (`gpu::graph`).
pub fn matmul_into(
    y: &Tensor,
    x: &Tensor,
    w: &Tensor,
    weight: WeightLayout,
) -> candle_core::Result<()> {
    y.inplace_op3(x, w, &LtMatmul { weight })
}

struct LtMatmul {
    weight: WeightLayout,
}

impl LtMatmul {
    /// Checks shapes and returns (m, n, k, output shape).
    fn shapes(
        &self,
        x: &Layout,
        w: &Layout,
        bias: Option<&Layout>,
    ) -> candle_core::Result<(usize, usize, usize, Shape)> {
        if !x.is_contiguous() || !w.is_contiguous() || bias.is_some_and(|b| !b.is_contiguous()) {
            candle_core::bail!("cublaslt matmul: inputs must be contiguous");
        }
        let x_dims = x.dims();
        let w_dims = w.dims();
        let (Some(&k), [w0, w1]) = (x_dims.last(), w_dims) else {
            candle_core::bail!(
                "cublaslt matmul: x {x_dims:?} and w {w_dims:?} must be [.., k] and 2-D"
            );
        };
        let (n, wk) = match self.weight {
            WeightLayout::OutIn => (*w0, *w1),
            WeightLayout::InOut => (*w1, *w0),
        };
        if wk != k {
            candle_core::bail!(
                "cublaslt matmul: x {x_dims:?} has k = {k}, w {w_dims:?} ({:?}) has k = {wk}",
                self.weight
            );
        }
        if let Some(b) = bias {
            if b.dims() != [n] {
                candle_core::bail!("cublaslt matmul: bias {:?}, expected [{n}]", b.dims());
            }
        }
        let m = x_dims.iter().rev().skip(1).product::<usize>();
        let mut out = x_dims.to_vec();
        *out.last_mut().expect("x has a last dimension") = n;
        Ok((m, n, k, Shape::from(out)))
    }

    fn run<T: CudaDType + DeviceRepr>(
        &self,
        x: (&CudaStorage, &Layout),
        w: (&CudaStorage, &Layout),
        bias: Option<(&CudaStorage, &Layout)>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (m, n, _, shape) = self.shapes(x.1, w.1, bias.map(|b| b.1))?;
        let device = x.0.device().clone();
        // SAFETY: every element of y is written by the product.
        let mut y = unsafe { device.alloc::<T>(m * n) }?;
        self.launch::<T>(x, w, bias, &mut y, 0)?;
        Ok((CudaStorage::wrap_cuda_slice(y, device), shape))
    }

    /// Launches the product into y[y_offset..y_offset + m n] on Candle's stream.
    fn launch<T: CudaDType + DeviceRepr>(
        &self,
        (x, xl): (&CudaStorage, &Layout),
        (w, wl): (&CudaStorage, &Layout),
        bias: Option<(&CudaStorage, &Layout)>,
        y: &mut CudaSlice<T>,
        y_offset: usize,
    ) -> candle_core::Result<()> {
        let (m, n, k, _) = self.shapes(xl, wl, bias.map(|b| b.1))?;
        if y.len() < y_offset + m * n {
            candle_core::bail!(
                "cublaslt matmul: output holds {} elements from {y_offset}, needs {}",
                y.len(),
                m * n
            );
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let ctx = LtContext::for_device(x.device())?;
        let key = PlanKey {
            dtype: x.dtype(),
            m: m as u64,
            n: n as u64,
            k: k as u64,
            weight: self.weight,
            bias: bias.is_some(),
        };
        let plan = ctx.plan(key)?;
        let stream = &ctx.stream;
        let x_slice = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
        let w_slice = w.as_cuda_slice::<T>()?.slice(wl.start_offset()..);
        let mut y_slice = y.slice_mut(y_offset..);
        let (x_ptr, _x_guard) = x_slice.device_ptr(stream);
        let (w_ptr, _w_guard) = w_slice.device_ptr(stream);
        let (y_ptr, _y_guard) = y_slice.device_ptr_mut(stream);
        let (ws_ptr, _ws_guard) = ctx.workspace.device_ptr(stream);
        let alpha = 1f32;
        let beta = 0f32;
        // Hold the cache lock while the bias pointer is set and the product launched, so two threads
        // sharing one plan cannot swap each other's bias pointer in between.
        let _plans = ctx
            .plans
            .lock()
            .map_err(|_| cuda_err("plan cache", "poisoned lock"))?;
        let bias_slice = match bias {
            Some((b, bl)) => Some(b.as_cuda_slice::<T>()?.slice(bl.start_offset()..)),
            None => None,
        };
        let bias_ptr = bias_slice.as_ref().map(|b| b.device_ptr(stream));
        // SAFETY: the pointers are live device allocations of the sizes the layouts describe (shapes
        // checked above), the plan's handles are live, and the launch is ordered on Candle's stream.
        unsafe {
            if let Some((ptr, _)) = &bias_ptr {
                let ptr: CUdeviceptr = *ptr;
                set_desc(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &ptr,
                )
                .map_err(|e| cuda_err("bias pointer", e))?;
            }
            lt::matmul(
                ctx.handle,
                plan.desc,
                (&alpha) as *const f32 as *const _,
                (&beta) as *const f32 as *const _,
                w_ptr as *const _,
                plan.a,
                x_ptr as *const _,
                plan.b,
                y_ptr as *const _,
                plan.d,
                y_ptr as *mut _,
                plan.d,
                &plan.algo,
                ws_ptr as *mut _,
                WORKSPACE_BYTES,
                stream.cu_stream() as *mut _,
            )
            .map_err(|e| cuda_err(&format!("matmul {key:?}"), e))?;
        }
        Ok(())
    }

    fn dispatch(
        &self,
        x: (&CudaStorage, &Layout),
        w: (&CudaStorage, &Layout),
        bias: Option<(&CudaStorage, &Layout)>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dtypes = [
            Some(x.0.dtype()),
            Some(w.0.dtype()),
            bias.map(|b| b.0.dtype()),
        ];
        if dtypes.iter().flatten().any(|d| *d != x.0.dtype()) {
            candle_core::bail!("cublaslt matmul: mixed dtypes {dtypes:?}");
        }
        match x.0.dtype() {
            DType::F32 => self.run::<f32>(x, w, bias),
            DType::BF16 => self.run::<half::bf16>(x, w, bias),
            DType::F16 => self.run::<half::f16>(x, w, bias),
            other => Err(candle_core::Error::UnsupportedDTypeForOp(
                other,
                "cublaslt matmul",
            )),
        }
    }
}

/// The CPU side of the matmul ops: always an error (`gpu::dispatch::linear` is the CPU path).
fn cuda_only<T>() -> candle_core::Result<T> {
    candle_core::bail!("cublaslt matmul runs on CUDA only; use gpu::dispatch::linear")
}

impl candle_core::CustomOp2 for LtMatmul {
    fn name(&self) -> &'static str {
        "cublaslt-matmul"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        cuda_only()
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.dispatch((x, xl), (w, wl), None)
    }
}

impl candle_core::CustomOp3 for LtMatmul {
    fn name(&self) -> &'static str {
        "cublaslt-matmul-bias"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        cuda_only()
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        bias: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.dispatch((x, xl), (w, wl), Some((bias, bl)))
    }
}

impl candle_core::InplaceOp3 for LtMatmul {
    fn name(&self) -> &'static str {
        "cublaslt-matmul-into"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        cuda_only()
    }

    fn cuda_fwd(
        &self,
        y: &mut CudaStorage,
        yl: &Layout,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<()> {
        let (_, _, _, shape) = self.shapes(xl, wl, None)?;
        if !yl.is_contiguous() || yl.dims() != shape.dims() {
            candle_core::bail!(
                "cublaslt matmul_into: y {:?} must be contiguous {:?}",
                yl.dims(),
                shape.dims()
            );
        }
        if [x.dtype(), w.dtype()].iter().any(|d| *d != y.dtype()) {
            candle_core::bail!(
                "cublaslt matmul_into: dtypes y {:?}, x {:?}, w {:?}",
                y.dtype(),
                x.dtype(),
                w.dtype()
            );
        }
        let offset = yl.start_offset();
        match y.dtype() {
            DType::F32 => self.launch::<f32>(
                (x, xl),
                (w, wl),
                None,
                y.as_cuda_slice_mut::<f32>()?,
                offset,
            ),
            DType::BF16 => {
                self.launch::<half::bf16>((x, xl), (w, wl), None, y.as_cuda_slice_mut()?, offset)
            }
            DType::F16 => {
                self.launch::<half::f16>((x, xl), (w, wl), None, y.as_cuda_slice_mut()?, offset)
            }
            other => Err(candle_core::Error::UnsupportedDTypeForOp(
                other,
                "cublaslt matmul",
            )),
        }
    }
}
