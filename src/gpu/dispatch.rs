//! Matmul dispatch: `linear` computes y = x W^T (+ bias) on every device, and on CUDA picks the path
//! (Candle's cuBLAS call, wick's cached cuBLASLt plan, or wick's one-launch small-matrix kernel) per
//! shape from a measured table.
//!
//! The table is data: `src/gpu/dispatch_table.json`, written by `wick bench dispatch --write-table`
//! on the GPU machine (the run that wrote it is named in the file). A shape that is not in the table
//! takes the path of the nearest measured shape (distance in log2 of m, n and k), so a table measured
//! on a grid covers the shapes in between. With an empty table every shape takes Candle's path.

use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Context, Result};

/// One way to compute a matrix product on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatmulPath {
    /// Candle's `matmul` (cublasGemmStridedBatchedEx with a transposed view of W).
    Candle,
    /// `gpu::cublaslt::matmul`: one cached descriptor, layouts and algorithm per shape.
    CublasLt,
    /// `gpu::small_matmul::linear`: wick's one-launch kernels for small products (the dot kernel
    /// for few outputs and moderate k, else skinny or tiled: `small_matmul::choose_kernel`; shapes
    /// outside `small_matmul::supports` fall back to cuBLASLt). The table picks this path per shape
    /// from GPU measurements; the kernel cutoffs only choose among wick's own kernels.
    Small,
}

impl MatmulPath {
    /// Every path the benchmark measures.
    pub const ALL: [MatmulPath; 3] = [MatmulPath::Candle, MatmulPath::CublasLt, MatmulPath::Small];

    /// The name used in the table and the benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            MatmulPath::Candle => "candle",
            MatmulPath::CublasLt => "cublas-lt",
            MatmulPath::Small => "small",
        }
    }

    /// Whether this path runs a product of x: [m, k] and W: [n, k] itself (rather than handing it
    /// to another path): false only for `Small` beyond the small kernel's limits.
    pub fn takes(self, m: usize, n: usize, k: usize) -> bool {
        match self {
            MatmulPath::Small => super::small_matmul::supports(m, n, k),
            _ => true,
        }
    }
}

/// One measured shape and the path that won it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DispatchEntry {
    /// "f32", "bf16" or "f16".
    pub dtype: String,
    /// Rows of x (tokens).
    pub m: usize,
    /// Rows of W (output features).
    pub n: usize,
    /// Columns of x and W (input features).
    pub k: usize,
    /// The fastest path at this shape.
    pub path: MatmulPath,
}

/// The dispatch table as stored in `dispatch_table.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DispatchTable {
    /// The command, device and date that produced the table.
    #[serde(default)]
    pub source: String,
    /// One entry per measured (dtype, m, n, k).
    #[serde(default)]
    pub entries: Vec<DispatchEntry>,
}

impl DispatchTable {
    /// The path for a product of x: [m, k] and W: [n, k] in `dtype`: the measured shape nearest in
    /// log2(m), log2(n), log2(k), among entries of the same dtype; Candle's when there are none.
    pub fn choose(&self, dtype: DType, m: usize, n: usize, k: usize) -> MatmulPath {
        let name = dtype.as_str();
        let log = |v: usize| (v.max(1) as f64).log2();
        self.entries
            .iter()
            .filter(|e| e.dtype == name)
            .map(|e| {
                let d = (log(e.m) - log(m)).powi(2)
                    + (log(e.n) - log(n)).powi(2)
                    + (log(e.k) - log(k)).powi(2);
                (d, e.path)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map_or(MatmulPath::Candle, |(_, path)| path)
    }
}

/// The table compiled into wick (`src/gpu/dispatch_table.json`).
pub fn table() -> &'static DispatchTable {
    static TABLE: OnceLock<DispatchTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        serde_json::from_str(include_str!("dispatch_table.json")).unwrap_or_else(|err| {
            tracing::warn!("src/gpu/dispatch_table.json is unreadable ({err}); using Candle's matmul everywhere");
            DispatchTable::default()
        })
    })
}

/// The path [`table`] picks for (dtype, m, n, k), memoized per thread. The table's scan (log2
/// distances to the ~50 entries of a dtype: ~300 `log2` calls) costs about a microsecond, as much as
/// launching the small kernel (`wick bench overhead`, "allocating path" table); a model calls few
/// distinct shapes, so after the first call a shape costs one hash lookup.
pub fn choose(dtype: DType, m: usize, n: usize, k: usize) -> MatmulPath {
    use std::cell::RefCell;
    use std::collections::HashMap;
    /// Distinct shapes kept per thread before the memo starts over (bounds its memory).
    const MEMO_CAP: usize = 4096;
    thread_local! {
        static MEMO: RefCell<HashMap<(DType, usize, usize, usize), MatmulPath>> =
            RefCell::new(HashMap::new());
    }
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        let key = (dtype, m, n, k);
        if let Some(path) = memo.get(&key) {
            return *path;
        }
        if memo.len() >= MEMO_CAP {
            memo.clear();
        }
        let path = table().choose(dtype, m, n, k);
        memo.insert(key, path);
        path
    })
}

/// y = x W^T (+ bias), the Linear layer's product, on any device.
///
/// x: [.., k]; w: [n, k]; bias: [n]; returns y: [.., n]. On CUDA the path comes from [`table`].
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, k) = w.dims2().context("linear: weight must be [out, in]")?;
    let m = x.elem_count() / k.max(1);
    let path = if x.device().is_cuda() {
        choose(x.dtype(), m, n, k)
    } else {
        MatmulPath::Candle
    };
    linear_with(path, x, w, bias)
}

/// y = x W^T (+ bias) through one given path (the benchmark measures each).
///
/// x: [.., k]; w: [n, k]; bias: [n]; returns y: [.., n].
pub fn linear_with(
    path: MatmulPath,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    match path {
        MatmulPath::Candle => {
            let y = x
                .broadcast_matmul(&w.t()?)
                .context("linear (candle matmul)")?;
            match bias {
                Some(b) => Ok(y.broadcast_add(b).context("linear bias")?),
                None => Ok(y),
            }
        }
        MatmulPath::CublasLt => cublas_lt(x, w, bias),
        MatmulPath::Small => {
            let (n, k) = w.dims2().context("linear: weight must be [out, in]")?;
            let m = x.elem_count() / k.max(1);
            if x.device().is_cuda() && !super::small_matmul::supports(m, n, k) {
                return cublas_lt(x, w, bias);
            }
            super::small_matmul::linear(x, w, bias)
        }
    }
}

#[cfg(feature = "cuda")]
fn cublas_lt(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let bias = bias.map(Tensor::contiguous).transpose()?;
    super::cublaslt::matmul(&x, &w, bias.as_ref(), super::cublaslt::WeightLayout::OutIn)
        .context("linear (cuBLASLt)")
}

#[cfg(not(feature = "cuda"))]
fn cublas_lt(_: &Tensor, _: &Tensor, _: Option<&Tensor>) -> Result<Tensor> {
    Err(crate::Error::InvalidOption {
        option: "matmul path".into(),
        reason: "cuBLASLt needs a wick built with the `cuda` feature".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dtype: &str, m: usize, n: usize, k: usize, path: MatmulPath) -> DispatchEntry {
        DispatchEntry {
            dtype: dtype.into(),
            m,
            n,
            k,
            path,
        }
    }

    #[test]
    fn memoized_choice_is_the_table_scan() {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            for (m, n, k) in [(1, 64, 64), (64, 64, 64), (7, 4096, 576), (512, 1536, 576)] {
                let want = table().choose(dtype, m, n, k);
                assert_eq!(choose(dtype, m, n, k), want);
                assert_eq!(choose(dtype, m, n, k), want, "second (memoized) call");
            }
        }
    }

    #[test]
    fn nearest_measured_shape_of_the_same_dtype_wins() {
        let table = DispatchTable {
            source: "test".into(),
            entries: vec![
                entry("f32", 1, 64, 64, MatmulPath::CublasLt),
                entry("f32", 4096, 4096, 4096, MatmulPath::Candle),
                entry("bf16", 1, 64, 64, MatmulPath::Candle),
                entry("f16", 64, 64, 64, MatmulPath::Small),
            ],
        };
        assert_eq!(table.choose(DType::F32, 2, 64, 64), MatmulPath::CublasLt);
        assert_eq!(
            table.choose(DType::F32, 2048, 4096, 4096),
            MatmulPath::Candle
        );
        assert_eq!(table.choose(DType::BF16, 1, 64, 64), MatmulPath::Candle);
        assert_eq!(table.choose(DType::F16, 1, 64, 64), MatmulPath::Small);
        // No f64 entries: Candle's path.
        assert_eq!(table.choose(DType::F64, 1, 64, 64), MatmulPath::Candle);
    }

    #[test]
    fn small_path_takes_only_what_the_kernel_supports() {
        assert!(MatmulPath::Small.takes(64, 64, 64));
        assert!(!MatmulPath::Small.takes(4096, 4096, 4096));
        assert!(MatmulPath::CublasLt.takes(4096, 4096, 4096));
        // On the CPU every path is the plain product; the small path's CPU route is its reference.
        let dev = candle_core::Device::Cpu;
        let x = Tensor::arange(0f32, 12., &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let w = Tensor::arange(0f32, 8., &dev)
            .unwrap()
            .reshape((2, 4))
            .unwrap();
        let y: Vec<Vec<f32>> = linear_with(MatmulPath::Small, &x, &w, None)
            .unwrap()
            .to_vec2()
            .unwrap();
        // Row i of x is [4i, 4i+1, 4i+2, 4i+3]; w rows [0,1,2,3] and [4,5,6,7]: exact in f32.
        let want: Vec<Vec<f32>> = (0..3)
            .map(|i| {
                (0..2)
                    .map(|j| (0..4).map(|t| ((4 * i + t) * (4 * j + t)) as f32).sum())
                    .collect()
            })
            .collect();
        assert_eq!(y, want);
    }

    #[test]
    fn compiled_table_parses() {
        let text = include_str!("dispatch_table.json");
        let parsed: DispatchTable = serde_json::from_str(text).expect("dispatch_table.json parses");
        assert!(parsed
            .entries
            .iter()
            .all(|e| ["f32", "bf16", "f16"].contains(&e.dtype.as_str())));
    }

    #[test]
    fn cpu_linear_matches_f64_reference() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let (m, n, k) = (3, 5, 17);
        let xs: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let ws: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let bs: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let dev = candle_core::Device::Cpu;
        let x = Tensor::from_slice(&xs, (m, k), &dev).unwrap();
        let w = Tensor::from_slice(&ws, (n, k), &dev).unwrap();
        let b = Tensor::from_slice(&bs, n, &dev).unwrap();
        let y: Vec<f32> = linear(&x, &w, Some(&b))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: f64 = bs[j] as f64
                    + (0..k)
                        .map(|t| xs[i * k + t] as f64 * ws[j * k + t] as f64)
                        .sum::<f64>();
                let got = y[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "y[{i},{j}] = {got}, want {want}"
                );
            }
        }
    }
}
