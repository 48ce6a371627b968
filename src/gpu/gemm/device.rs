//! The CUDA side of `gpu::gemm`: per-device [`Gemm`] with its plan cache, and the launch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::cublaslt::{result as lt, sys};
use candle_core::cuda_backend::cudarc::driver::{CudaStream, DevicePtr};
use candle_core::cuda_backend::DeviceId;
use candle_core::CudaDevice;

use super::{pointer_alignment as alignment, GemmShape};
use crate::gpu::cublaslt::{
    algo_attribute, cuda_err, lt_data_type, set_desc, LtContext, PlanInfo, WORKSPACE_BYTES,
};

/// A plan is valid for one shape and for pointers at least this aligned (bytes, A, B, C, D).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    shape: GemmShape,
    align: [u32; 4],
}

impl PlanKey {
    fn new(shape: &GemmShape, (a, b, c, d): (u64, u64, u64, u64)) -> Self {
        let (ab, db) = (shape.ab_type.size_in_bytes(), shape.d_type.size_in_bytes());
        let batch = shape.batch;
        PlanKey {
            shape: *shape,
            align: [
                alignment(a, shape.stride_a, ab, batch),
                alignment(b, shape.stride_b, ab, batch),
                alignment(c, shape.stride_d, db, batch),
                alignment(d, shape.stride_d, db, batch),
            ],
        }
    }
}

/// Index of each layout in `Plan::layouts`: cuBLASLt's A is our B, its B our A (module comment).
const LT_A: usize = 0;
const LT_B: usize = 1;
const LT_D: usize = 2;

/// A descriptor, the layouts (Lt A = our B, Lt B = our A, D also used for C) and the algorithm.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: Vec<sys::cublasLtMatrixLayout_t>,
    algo: sys::cublasLtMatmulAlgo_t,
    info: PlanInfo,
}

// SAFETY: the handles are plain descriptors, read-only after the plan is built; cuBLASLt allows
// them to be used from any thread.
unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by this plan and is destroyed once; a failure can only
        // leak a descriptor.
        unsafe {
            for layout in &self.layouts {
                let _ = lt::destroy_matrix_layout(*layout);
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// Matrix products on raw device pointers for one device (see the module comment of `gpu::gemm`).
pub struct Gemm {
    /// Owns the handle and the workspace used below.
    _lt: Arc<LtContext>,
    handle: sys::cublasLtHandle_t,
    workspace: u64,
    stream: Arc<CudaStream>,
    plans: Mutex<HashMap<PlanKey, Arc<Plan>>>,
}

// SAFETY: the handle is only passed to cublasLtMatmul and the heuristic query, which cuBLASLt allows
// from any thread; the plan cache is behind a mutex.
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}

type Result<T> = candle_core::Result<T>;

impl Gemm {
    /// The products of `dev`, created on first use (sharing `cublaslt::LtContext`'s handle and
    /// workspace). Call it before capturing a graph: the first call may allocate the workspace.
    pub fn for_device(dev: &CudaDevice) -> Result<Arc<Gemm>> {
        static GEMMS: OnceLock<Mutex<HashMap<DeviceId, Arc<Gemm>>>> = OnceLock::new();
        let gemms = GEMMS.get_or_init(|| Mutex::new(HashMap::new()));
        let mut gemms = gemms
            .lock()
            .map_err(|_| cuda_err("gemm registry", "poisoned lock"))?;
        if let Some(gemm) = gemms.get(&dev.id()) {
            return Ok(gemm.clone());
        }
        let lt = LtContext::for_device(dev)?;
        let (workspace, stream) = lt.workspace();
        // The address is taken once; the workspace lives as long as the context this Gemm holds.
        let (workspace_ptr, _sync) = workspace.device_ptr(stream);
        let gemm = Arc::new(Gemm {
            handle: lt.handle(),
            workspace: workspace_ptr,
            stream: stream.clone(),
            _lt: lt.clone(),
            plans: Mutex::new(HashMap::new()),
        });
        gemms.insert(dev.id(), gemm.clone());
        Ok(gemm)
    }

    /// The stream every product launches on (Candle's).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// D = alpha op(A) op(B) + beta D (C = D; with beta 0 D's prior content is not read).
    /// `a`, `b`, `d`: device addresses of buffers of at least `shape.a_len()`, `b_len()`,
    /// `d_len()` elements of `ab_type`, `ab_type`, `d_type`, valid until the stream has run the
    /// product (and for every replay of a graph that captured it).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        shape: &GemmShape,
        a: u64,
        b: u64,
        d: u64,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        self.run_c(shape, a, b, d, d, alpha, beta)
    }

    /// D = alpha op(A) op(B) + beta C, C a distinct buffer laid out as D (ldd, stride_d, d_type):
    /// the residual add of `h = x + o W^T` in the product's epilogue. C may equal D.
    #[allow(clippy::too_many_arguments)]
    pub fn run_c(
        &self,
        shape: &GemmShape,
        a: u64,
        b: u64,
        c: u64,
        d: u64,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        if a == 0 || b == 0 || c == 0 || d == 0 {
            return Err(cuda_err(
                &format!("gemm {shape:?}"),
                "null device pointer (a, b, c, d)",
            ));
        }
        let plan = self.plan(PlanKey::new(shape, (a, b, c, d)))?;
        // SAFETY: the plan's handles are live; the caller guarantees the pointers cover the spans
        // the layouts describe (the shape was validated when the plan was built); the workspace
        // is this context's; the product is ordered on Candle's stream. alpha and beta are read
        // on the host before cublasLtMatmul returns (host pointer mode).
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                (&alpha) as *const f32 as *const _,
                (&beta) as *const f32 as *const _,
                b as *const _,
                plan.layouts[LT_A],
                a as *const _,
                plan.layouts[LT_B],
                c as *const _,
                plan.layouts[LT_D],
                d as *mut _,
                plan.layouts[LT_D],
                &plan.algo,
                self.workspace as *mut _,
                WORKSPACE_BYTES,
                self.stream.cu_stream() as *mut _,
            )
        }
        .map_err(|e| cuda_err(&format!("gemm {shape:?}"), e))
    }

    /// Builds (or finds) the plan of `shape` for 256-byte aligned pointers (allocations; a pointer
    /// at an offset with less alignment gets its own plan on first use) and returns what the
    /// heuristic chose. Errors name the shape when it is invalid or has no algorithm.
    pub fn prepare(&self, shape: &GemmShape) -> Result<PlanInfo> {
        Ok(self.plan(PlanKey::new(shape, (0, 0, 0, 0)))?.info)
    }

    /// How many plans are cached.
    pub fn cached_plans(&self) -> usize {
        self.plans.lock().map(|p| p.len()).unwrap_or(0)
    }

    fn plan(&self, key: PlanKey) -> Result<Arc<Plan>> {
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| cuda_err("gemm plan cache", "poisoned lock"))?;
        if let Some(plan) = plans.get(&key) {
            return Ok(plan.clone());
        }
        let plan = Arc::new(self.build_plan(&key)?);
        tracing::debug!(?key, info = ?plan.info, "gemm plan built");
        plans.insert(key, plan.clone());
        Ok(plan)
    }

    fn build_plan(&self, key: &PlanKey) -> Result<Plan> {
        let shape = &key.shape;
        let what = format!("gemm {shape:?} (alignment a/b/c/d {:?} bytes)", key.align);
        if let Some(why) = shape.invalid() {
            return Err(cuda_err(&what, why));
        }
        let ab_type = lt_data_type(shape.ab_type)?;
        let d_type = lt_data_type(shape.d_type)?;
        let compute = if shape.tf32 {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let desc = lt::create_matmul_desc(compute, sys::cudaDataType_t::CUDA_R_32F)
            .map_err(|e| cuda_err(&what, e))?;
        let mut plan = Plan {
            desc,
            layouts: Vec::with_capacity(3),
            // SAFETY: an all-zero algo is a valid placeholder; it is overwritten below.
            algo: unsafe { std::mem::zeroed() },
            info: PlanInfo::default(),
        };
        let (m, n, k) = (shape.m as u64, shape.n as u64, shape.k as u64);
        // Lt A = our B: column-major [n, k] (not transposed) or [k, n] (transposed).
        let (lt_a_dims, transa) = if shape.trans_b {
            ((k, n), 1i32)
        } else {
            ((n, k), 0)
        };
        // Lt B = our A: column-major [k, m] or [m, k] (transposed).
        let (lt_b_dims, transb) = if shape.trans_a {
            ((m, k), 1i32)
        } else {
            ((k, m), 0)
        };
        let layouts = [
            (ab_type, lt_a_dims, shape.ldb, shape.stride_b),
            (ab_type, lt_b_dims, shape.lda, shape.stride_a),
            (d_type, (n, m), shape.ldd, shape.stride_d),
        ];
        use sys::cublasLtMatmulDescAttributes_t as Desc;
        for (dtype, (rows, cols), ld, stride) in layouts {
            let layout = lt::create_matrix_layout(dtype, rows, cols, ld as i64)
                .map_err(|e| cuda_err(&what, e))?;
            plan.layouts.push(layout);
            if shape.batch > 1 {
                let (count, offset) = (shape.batch as i32, stride as i64);
                // SAFETY: the layout is live; the attributes take an i32 and an i64.
                unsafe {
                    use sys::cublasLtMatrixLayoutAttribute_t as L;
                    lt::set_matrix_layout_attribute(
                        layout,
                        L::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                        (&count) as *const i32 as *const _,
                        std::mem::size_of::<i32>(),
                    )
                    .and_then(|()| {
                        lt::set_matrix_layout_attribute(
                            layout,
                            L::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                            (&offset) as *const i64 as *const _,
                            std::mem::size_of::<i64>(),
                        )
                    })
                }
                .map_err(|e| cuda_err(&what, e))?;
            }
        }
        // SAFETY: the descriptor is live; TRANSA/TRANSB take a cublasOperation_t (i32).
        unsafe {
            set_desc(plan.desc, Desc::CUBLASLT_MATMUL_DESC_TRANSA, &transa)
                .and_then(|()| set_desc(plan.desc, Desc::CUBLASLT_MATMUL_DESC_TRANSB, &transb))
        }
        .map_err(|e| cuda_err(&what, e))?;

        let chosen = self.heuristic(&plan, key.align, &what)?;
        plan.algo = chosen.algo;
        use sys::cublasLtMatmulAlgoConfigAttributes_t as A;
        plan.info = PlanInfo {
            algo_id: algo_attribute(&plan.algo, A::CUBLASLT_ALGO_CONFIG_ID),
            tile_id: algo_attribute(&plan.algo, A::CUBLASLT_ALGO_CONFIG_TILE_ID),
            split_k: algo_attribute(&plan.algo, A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
            reduction_scheme: algo_attribute(&plan.algo, A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
            workspace_bytes: chosen.workspaceSize,
            waves: chosen.wavesCount,
        };
        Ok(plan)
    }

    /// cuBLASLt's best algorithm for `plan`'s descriptor and layouts, within the workspace and
    /// the operands' alignments (`align`: our a, b, c, d in bytes): the first usable of up to 8
    /// candidates.
    fn heuristic(
        &self,
        plan: &Plan,
        align: [u32; 4],
        what: &str,
    ) -> Result<sys::cublasLtMatmulHeuristicResult_t> {
        use sys::cublasLtMatmulPreferenceAttributes_t as Pref;
        let preference = lt::create_matmul_pref().map_err(|e| cuda_err(what, e))?;
        const REQUESTED: usize = 8;
        // SAFETY: an all-zero result array is valid memory for the query to fill.
        let mut results: [sys::cublasLtMatmulHeuristicResult_t; REQUESTED] =
            unsafe { std::mem::zeroed() };
        let mut count = 0i32;
        // SAFETY: every pointer passed points at a live value of the size given; the preference is
        // destroyed once whatever happens.
        let status = unsafe {
            let set_pref = |attr: Pref, value: *const std::ffi::c_void, size: usize| {
                lt::set_matmul_pref_attribute(preference, attr, value, size)
            };
            let workspace = WORKSPACE_BYTES;
            let result = set_pref(
                Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace) as *const usize as *const _,
                std::mem::size_of::<usize>(),
            )
            .and_then(|()| {
                let attrs = [
                    Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                ];
                // Lt's A is our B and its B our A.
                let lt_align = [align[1], align[0], align[2], align[3]];
                for (attr, bytes) in attrs.into_iter().zip(lt_align) {
                    set_pref(
                        attr,
                        (&bytes) as *const u32 as *const _,
                        std::mem::size_of::<u32>(),
                    )?;
                }
                Ok(())
            })
            .and_then(|()| {
                sys::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    plan.desc,
                    plan.layouts[LT_A],
                    plan.layouts[LT_B],
                    plan.layouts[LT_D],
                    plan.layouts[LT_D],
                    preference,
                    REQUESTED as i32,
                    results.as_mut_ptr(),
                    &mut count,
                )
                .result()
            });
            let _ = lt::destroy_matmul_pref(preference);
            result
        };
        status.map_err(|e| cuda_err(&format!("heuristic for {what}"), e))?;
        let returned = &results[..(count.max(0) as usize).min(REQUESTED)];
        let Some(chosen) = returned
            .iter()
            .find(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
        else {
            return Err(cuda_err(
                what,
                format!(
                    "cuBLASLt has no algorithm for this product ({} candidates, none usable)",
                    returned.len()
                ),
            ));
        };
        Ok(*chosen)
    }
}
