//! The decode engine's LoRA and bias path on the GPU against `lora_reference` (part of
//! `wick bench gpu-check`, records `dec_lora_*`): the mat-vec that computes the shrink in producer
//! blocks and adds the bias and each sequence's delta in its epilogue, batch 1 and batched with a
//! different adapter slot per sequence (one of them none), for every quant type, at odd ranks (5,
//! and 40: more than a warp's lanes; more shrink tasks than the grid has warps) and odd row counts,
//! outputs poisoned with NaN where they are not accumulated. The reference computes x A^T itself in
//! f64, so the whole chain is checked, not the expand alone. Each launch starts from xa marked
//! pending, as the engine's step does (a pending value nobody produces traps the launch). The
//! batch-1 case runs again on the int8-activation kernels (`dec_lora_qmv_q8x_*`).

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};

use super::check::{blocks, f32s, DecodeCase};
use super::launch::{
    device_ptr, xa_sequences, DecodeKernels, Epilogue, L2Window, LoraArgs, LoraEpilogue, XA_PENDING,
};
use super::lora_reference::{self, LoraGroup};
use super::reference::Activations;
use super::QuantType;
use crate::Result;

fn err(what: &str) -> impl Fn(candle_core::Error) -> crate::Error + '_ {
    move |source| crate::Error::Candle {
        context: format!("LoRA decode check: {what}"),
        source,
    }
}

fn up<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
    k: &DecodeKernels,
    v: &[T],
) -> Result<CudaSlice<T>> {
    k.stream().clone_htod(v).map_err(|e| crate::Error::Candle {
        context: "LoRA decode check upload".into(),
        source: candle_core::Error::Msg(format!("{e:?}")),
    })
}

/// `n` xa values marked pending (XA_PENDING: no producer has stored them).
fn pending(n: usize) -> Vec<f32> {
    vec![f32::from_bits(XA_PENDING); n]
}

fn down(k: &DecodeKernels, s: &CudaSlice<f32>) -> Result<Vec<f64>> {
    let v = k.stream().clone_dtoh(s).map_err(|e| crate::Error::Candle {
        context: "LoRA decode check read-back".into(),
        source: candle_core::Error::Msg(format!("{e:?}")),
    })?;
    Ok(v.into_iter().map(f64::from).collect())
}

/// A device buffer of any element type, for its address.
trait Ptr {
    fn addr(&self, stream: &candle_core::cuda_backend::cudarc::driver::CudaStream) -> u64;
}

impl<T> Ptr for CudaSlice<T> {
    fn addr(&self, stream: &candle_core::cuda_backend::cudarc::driver::CudaStream) -> u64 {
        device_ptr(self, stream)
    }
}

/// One case's shapes: output rows, input width, rank, sequences, slot per sequence, slots in the
/// pool, segment bounds (q/k/v-like when e0 < rows).
struct Shape {
    rows: usize,
    k: usize,
    rank: usize,
    seq_slots: Vec<i32>,
    pool: usize,
    e0: usize,
    e1: usize,
}

/// The checked shapes (the batch-1 ones also on the int8-activation kernels).
fn shapes() -> [Shape; 6] {
    [
        // q/k/v-like: 9 heads of 32 + 2 x 3 kv heads, rank 5, batch 1.
        Shape {
            rows: 480,
            k: 96,
            rank: 5,
            seq_slots: vec![1],
            pool: 3,
            e0: 288,
            e1: 384,
        },
        // Batched, one slot per sequence and one sequence without an adapter, rank 40.
        Shape {
            rows: 160,
            k: 576,
            rank: 40,
            seq_slots: vec![2, -1, 0, 1, 2],
            pool: 3,
            e0: 96,
            e1: 128,
        },
        // One segment (o/down-like), batch 8, rank 16.
        Shape {
            rows: 37,
            k: 1536,
            rank: 16,
            seq_slots: vec![0, 1, 2, 3, 4, 5, 6, 7],
            pool: 8,
            e0: usize::MAX >> 1,
            e1: usize::MAX >> 1,
        },
        // Batch 1, producer tasks of four warps (their sums exchanged through shared memory), rank
        // 16, one segment.
        Shape {
            rows: 40,
            k: 1536,
            rank: 16,
            seq_slots: vec![1],
            pool: 2,
            e0: usize::MAX >> 1,
            e1: usize::MAX >> 1,
        },
        // Batch 1 above k = 4096 (a producer task of the whole block), rank 8.
        Shape {
            rows: 24,
            k: 6400,
            rank: 8,
            seq_slots: vec![0],
            pool: 1,
            e0: usize::MAX >> 1,
            e1: usize::MAX >> 1,
        },
        // k past the four-warps-a-row cutoff (the batched LoRA kernels two warps a row, producer
        // tasks of 4 warps), batch 3 with a sequence without an adapter, rank 16.
        Shape {
            rows: 70,
            k: 2048,
            rank: 16,
            seq_slots: vec![1, -1, 0],
            pool: 2,
            e0: usize::MAX >> 1,
            e1: usize::MAX >> 1,
        },
    ]
}

/// `s` for format `q`: K-quant rows are whole super-blocks of 256 (96 -> 256, 576 -> 768).
fn for_format(q: QuantType, s: &Shape) -> Shape {
    let k = match (q.block_weights(), s.k) {
        (256, 96) => 256,
        (256, 576) => 768,
        (_, k) => k,
    };
    Shape {
        k,
        seq_slots: s.seq_slots.clone(),
        ..*s
    }
}

/// Runs every case on the f32-activation kernels (the kernels' mode); `next` draws seeds.
pub fn run(kernels: &DecodeKernels, next: &mut dyn FnMut() -> u64) -> Result<Vec<DecodeCase>> {
    let mut cases = Vec::new();
    for q in super::QUANT_TYPES {
        for s in &shapes() {
            let s = for_format(q, s);
            cases.extend(matvec_case(kernels, q, &s, Activations::F32, next)?);
            cases.extend(swiglu_case(kernels, q, &s, Activations::F32, next)?);
        }
    }
    Ok(cases)
}

/// The batch-1 cases of every format with `act` kernels (the kernels' mode must match).
pub fn run_batch1(
    kernels: &DecodeKernels,
    act: Activations,
    next: &mut dyn FnMut() -> u64,
) -> Result<Vec<DecodeCase>> {
    let mut cases = Vec::new();
    for q in super::QUANT_TYPES {
        if act == Activations::Int8 && !super::launch::has_int8_activations(q) {
            continue;
        }
        for s in shapes().iter().filter(|s| s.seq_slots.len() == 1) {
            let s = for_format(q, s);
            cases.extend(matvec_case(kernels, q, &s, act, next)?);
            cases.extend(swiglu_case(kernels, q, &s, act, next)?);
        }
    }
    Ok(cases)
}

/// Kernel-name infix and tolerance of the cases on `act` kernels.
fn family(act: Activations) -> (&'static str, Option<f64>) {
    match act {
        Activations::F32 => ("", None),
        Activations::Int8 => ("_q8x", Some(super::check::INT8_TOLERANCE)),
    }
}

/// Host and device copies of a pool's A ([pool][a_rows, k]) and B ([pool][b_rows, rank]), B
/// scaled like an adapter's (alpha / r = 2 / rank).
struct Pool {
    a: Vec<f32>,
    b: Vec<f32>,
    a_d: CudaSlice<f32>,
    b_d: CudaSlice<f32>,
    a_rows: usize,
    b_rows: usize,
}

fn pool(
    kernels: &DecodeKernels,
    s: &Shape,
    segments: usize,
    b_rows: usize,
    next: &mut dyn FnMut() -> u64,
) -> Result<Pool> {
    let a_rows = segments * s.rank;
    let a = f32s(s.pool * a_rows * s.k, next(), 1.0 / (s.k as f64).sqrt());
    let b = f32s(s.pool * b_rows * s.rank, next(), 2.0 / s.rank as f64);
    Ok(Pool {
        a_d: up(kernels, &a)?,
        b_d: up(kernels, &b)?,
        a,
        b,
        a_rows,
        b_rows,
    })
}

impl Pool {
    fn group(&self, s: &Shape, slot: usize) -> LoraGroup<'_> {
        let (sa, sb) = (self.a_rows * s.k, self.b_rows * s.rank);
        LoraGroup {
            a: &self.a[slot * sa..(slot + 1) * sa],
            b: &self.b[slot * sb..(slot + 1) * sb],
            rank: s.rank,
            e0: s.e0,
            e1: s.e1,
        }
    }

    /// The epilogue of a launch that computes the shrink into `xa` (pending values).
    fn epilogue(&self, s: &Shape, st: &CudaStream, slots: u64, xa: u64) -> LoraEpilogue {
        LoraEpilogue {
            args: LoraArgs {
                b: device_ptr(&self.b_d, st),
                slot_stride: (self.b_rows * s.rank) as i64,
                xa,
                slots,
                a: device_ptr(&self.a_d, st),
                a_slot_stride: (self.a_rows * s.k) as i64,
                rank: s.rank as i32,
                xa_stride: (3 * s.rank.max(1) + 1) as i32,
                e0: s.e0.min(i32::MAX as usize) as i32,
                e1: s.e1.min(i32::MAX as usize) as i32,
                a_rows: self.a_rows as i32,
                ..LoraArgs::default()
            },
            // B's lines, so that the checked launches carry the engine's access-policy attribute.
            resident: L2Window {
                base: device_ptr(&self.b_d, st),
                bytes: self.b_d.len() * 4,
            },
        }
    }
}

/// qmv with the shrink, bias, norm fused, accumulating, per sequence against `qmv_epilogue`.
fn matvec_case(
    kernels: &DecodeKernels,
    q: QuantType,
    s: &Shape,
    act: Activations,
    next: &mut dyn FnMut() -> u64,
) -> Result<Vec<DecodeCase>> {
    let (infix, tolerance) = family(act);
    let (rows, k, nb, eps) = (s.rows, s.k, s.seq_slots.len(), 1e-5f32);
    let segments = if s.e0 < rows { 3 } else { 1 };
    let p = pool(kernels, s, segments, rows, next)?;
    let w = blocks(q, rows, k, next())?;
    let x = f32s(nb * k, next(), 2.0);
    let g = f32s(k, next(), 1.0);
    let bias = f32s(rows, next(), 1.0);
    let y0 = f32s(nb * rows, next(), 1.0);
    let st = kernels.stream();
    let (wd, xd, gd, bd) = (
        up(kernels, &w)?,
        up(kernels, &x)?,
        up(kernels, &g)?,
        up(kernels, &bias)?,
    );
    let yd = up(kernels, &y0)?;
    let slots_d = up(kernels, &s.seq_slots)?;
    let xa = up(kernels, &pending(xa_sequences(nb) * (3 * s.rank + 1)))?;
    let ptr = |d: &dyn Ptr| d.addr(st);
    let lora = p.epilogue(s, st, ptr(&slots_d), ptr(&xa));
    let epilogue = Epilogue {
        bias: ptr(&bd),
        lora,
    };
    let name = format!(
        "lora_qmv{infix}{}_{}",
        if nb > 1 { "_batch" } else { "" },
        q.suffix()
    );
    (if nb == 1 {
        kernels.qmv(
            q,
            ptr(&wd),
            ptr(&xd),
            ptr(&gd),
            ptr(&yd),
            rows,
            k,
            eps,
            true,
            &epilogue,
        )
    } else {
        kernels.qmv_batch(
            q,
            ptr(&wd),
            ptr(&xd),
            ptr(&gd),
            ptr(&yd),
            rows,
            k,
            eps,
            true,
            nb,
            &epilogue,
        )
    })
    .map_err(err(&name))?;
    let want: Vec<f64> = (0..nb)
        .flat_map(|b| {
            let slot = s.seq_slots[b];
            let group = (slot >= 0).then(|| p.group(s, slot as usize));
            lora_reference::qmv_epilogue(
                q,
                &w,
                &x[b * k..(b + 1) * k],
                Some((&g, eps)),
                &y0[b * rows..(b + 1) * rows],
                true,
                Some(&bias),
                group.as_ref(),
                act,
            )
        })
        .collect();
    Ok(vec![DecodeCase {
        tolerance,
        kernel: format!("dec_{name}_bias_norm_add"),
        shape: format!(
            "[{rows}, {k}] rank {} slots {:?} segments at {}/{}",
            s.rank, s.seq_slots, s.e0, s.e1
        ),
        got: down(kernels, &yd)?,
        want,
    }])
}

/// qmv_swiglu with the shrink (2 segments) with the gate's and the up's deltas, per sequence.
fn swiglu_case(
    kernels: &DecodeKernels,
    q: QuantType,
    s: &Shape,
    act: Activations,
    next: &mut dyn FnMut() -> u64,
) -> Result<Vec<DecodeCase>> {
    let (infix, tolerance) = family(act);
    let (rows, k, nb, eps) = (s.rows, s.k, s.seq_slots.len(), 1e-5f32);
    let s = Shape {
        e0: usize::MAX >> 1,
        e1: usize::MAX >> 1,
        seq_slots: s.seq_slots.clone(),
        ..*s
    };
    let p = pool(kernels, &s, 2, 2 * rows, next)?;
    let (wg, wu) = (blocks(q, rows, k, next())?, blocks(q, rows, k, next())?);
    let x = f32s(nb * k, next(), 2.0);
    let g = f32s(k, next(), 1.0);
    let st = kernels.stream();
    let (gd_w, ud_w, xd, gd) = (
        up(kernels, &wg)?,
        up(kernels, &wu)?,
        up(kernels, &x)?,
        up(kernels, &g)?,
    );
    let yd = up(kernels, &vec![f32::NAN; nb * rows])?;
    let slots_d = up(kernels, &s.seq_slots)?;
    let xa = up(kernels, &pending(xa_sequences(nb) * (3 * s.rank + 1)))?;
    let ptr = |d: &dyn Ptr| d.addr(st);
    let lora = p.epilogue(&s, st, ptr(&slots_d), ptr(&xa));
    let name = format!(
        "lora_qmv{infix}_swiglu{}_{}",
        if nb > 1 { "_batch" } else { "" },
        q.suffix()
    );
    let (gp, upp) = (ptr(&gd_w), ptr(&ud_w));
    (if nb == 1 {
        kernels.qmv_swiglu(
            q,
            gp,
            upp,
            ptr(&xd),
            ptr(&gd),
            ptr(&yd),
            rows,
            k,
            eps,
            &lora,
        )
    } else {
        kernels.qmv_swiglu_batch(
            q,
            gp,
            upp,
            ptr(&xd),
            ptr(&gd),
            ptr(&yd),
            rows,
            k,
            eps,
            nb,
            &lora,
        )
    })
    .map_err(err(&name))?;
    let want: Vec<f64> = (0..nb)
        .flat_map(|b| {
            let slot = s.seq_slots[b];
            let group = (slot >= 0).then(|| p.group(&s, slot as usize));
            lora_reference::qmv_swiglu_lora(
                q,
                &wg,
                &wu,
                &x[b * k..(b + 1) * k],
                Some((&g, eps)),
                rows,
                group.as_ref(),
                act,
            )
        })
        .collect();
    Ok(vec![DecodeCase {
        tolerance,
        kernel: format!("dec_{name}"),
        shape: format!("[{rows}, {k}] rank {} slots {:?}", s.rank, s.seq_slots),
        got: down(kernels, &yd)?,
        want,
    }])
}
