//! The host side of the CUDA decode engines' LoRA adapters (`cuda_decode::adapters` holds the
//! device pool): one adapter as the engines load it (A and scaled B per projection, f32) and its
//! packing into a pool slot. The projections that read one input form a group and share one shrink
//! (computed inside the group's mat-vec): q/k/v (rms_norm(x)), o (attention output), gate/up (rms_norm(x)), down (swiglu output).
//! A slot holds per group A `[segments * R, in]` (each projection's A zero-padded to the pool's
//! rank R, one segment per projection) and B `[out rows, R]` scaled by alpha / r (the q/k/v
//! group's rows q | k | v, the gate/up group's gate | up), so the kernels read
//! `y[r] += sum_j xa[seg(r) R + j] B[r, j]` with `xa = x A^T` (`gpu::decode::lora_reference`).

use crate::lora::resident::ResidentAdapter;
use crate::models::linear::Linear;
use crate::{Context, Error, Result};

/// Projections of one layer in the order adapters list them (`Llama::linear_layers`).
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// A projection group: the projections that read one input and so share one shrink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Qkv,
    O,
    GateUp,
    Down,
}

/// The groups of a layer, in launch order.
pub const GROUPS: [Group; 4] = [Group::Qkv, Group::O, Group::GateUp, Group::Down];

impl Group {
    /// Indices into [`PROJECTIONS`] of the group's projections (its xa segments, in order).
    pub fn projections(self) -> &'static [usize] {
        match self {
            Group::Qkv => &[0, 1, 2],
            Group::O => &[3],
            Group::GateUp => &[4, 5],
            Group::Down => &[6],
        }
    }
}

/// The widths an adapter's matrices depend on.
#[derive(Debug, Clone, Copy)]
pub struct AdapterDims {
    pub hidden: usize,
    /// heads * head_dim
    pub q_out: usize,
    /// kv_heads * head_dim
    pub kv_out: usize,
    pub ffn: usize,
}

/// One group's sizes in a slot of rank `r`.
#[derive(Debug, Clone, Copy)]
pub struct GroupDims {
    /// Rows of A (segments * r) and its input width.
    pub a_rows: usize,
    pub k: usize,
    /// Rows of B (the group's output rows).
    pub b_rows: usize,
    /// Output rows [0, e0) read xa segment 0, [e0, e1) segment 1, the rest 2 (q/k/v); i32::MAX
    /// when the group has one segment per launch.
    pub e0: usize,
    pub e1: usize,
}

impl AdapterDims {
    /// (in, out) features of projection `p` (index into [`PROJECTIONS`]).
    pub fn projection(&self, p: usize) -> (usize, usize) {
        let (h, q, kv) = (self.hidden, self.q_out, self.kv_out);
        match p {
            0 => (h, q),
            1 | 2 => (h, kv),
            3 => (q, h),
            4 | 5 => (h, self.ffn),
            _ => (self.ffn, h),
        }
    }

    /// Sizes of group `g` in a slot of rank `r`.
    pub fn group(&self, g: Group, r: usize) -> GroupDims {
        let all = i32::MAX as usize;
        let (in_features, _) = self.projection(g.projections()[0]);
        let b_rows = g.projections().iter().map(|&p| self.projection(p).1).sum();
        let (e0, e1) = match g {
            Group::Qkv => (self.q_out, self.q_out + self.kv_out),
            _ => (all, all),
        };
        GroupDims {
            a_rows: g.projections().len() * r,
            k: in_features,
            b_rows,
            e0,
            e1,
        }
    }

    /// The images of group `g`'s A ([segments * r, k]) and B ([out rows, r]) in a slot of rank
    /// `r` for one layer's `projections` (zero where the adapter leaves a projection alone).
    pub fn pack(
        &self,
        g: Group,
        r: usize,
        projections: &[Option<ProjectionLora>; 7],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let d = self.group(g, r);
        let mut a = vec![0f32; d.a_rows * d.k];
        let mut b = vec![0f32; d.b_rows * r];
        let mut b_row0 = 0;
        for (seg, &p) in g.projections().iter().enumerate() {
            let (inp, out) = self.projection(p);
            if let Some(lora) = &projections[p] {
                if lora.rank > r
                    || lora.a.len() != lora.rank * inp
                    || lora.b.len() != out * lora.rank
                {
                    return Err(Error::InvalidRequest(format!(
                        "decode adapter: {} has rank {} (slots hold {r}), A of {} and B of {} values, expected [{}, {inp}] and [{out}, {}]",
                        PROJECTIONS[p],
                        lora.rank,
                        lora.a.len(),
                        lora.b.len(),
                        lora.rank,
                        lora.rank
                    )));
                }
                a[seg * r * inp..(seg * r + lora.rank) * inp].copy_from_slice(&lora.a);
                for row in 0..out {
                    let at = (b_row0 + row) * r;
                    b[at..at + lora.rank]
                        .copy_from_slice(&lora.b[row * lora.rank..(row + 1) * lora.rank]);
                }
            }
            b_row0 += out;
        }
        Ok((a, b))
    }
}

/// One projection's adapter on the host: A [rank, in] and B [out, rank] times the scale.
#[derive(Debug, Clone)]
pub struct ProjectionLora {
    pub rank: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// An adapter as the engines load it: per layer, per projection of [`PROJECTIONS`], its A and
/// scaled B, or `None` where the adapter leaves the projection alone.
#[derive(Debug, Clone)]
pub struct DecodeAdapter {
    pub layers: Vec<[Option<ProjectionLora>; 7]>,
}

impl DecodeAdapter {
    /// The largest rank of any projection (0 when empty).
    pub fn rank(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flatten()
            .map(|p| p.rank)
            .max()
            .unwrap_or(0)
    }

    /// The adapters attached to `linears` (`Llama::linear_layers`: 7 per layer, in
    /// [`PROJECTIONS`] order), copied to the host in f32 with B scaled; `None` when none has one.
    pub fn from_linears(linears: &[(String, &Linear)]) -> Result<Option<Self>> {
        if linears.iter().all(|(_, l)| l.lora.is_none()) {
            return Ok(None);
        }
        let mut layers = Vec::with_capacity(linears.len() / 7);
        for chunk in linears.chunks(7) {
            let mut layer: [Option<ProjectionLora>; 7] = Default::default();
            for (slot, (name, linear)) in layer.iter_mut().zip(chunk) {
                let Some(lora) = &linear.lora else { continue };
                let host = |t: &candle_core::Tensor, what: &str| {
                    t.to_dtype(candle_core::DType::F32)
                        .and_then(|t| t.flatten_all())
                        .and_then(|t| t.to_vec1::<f32>())
                        .context(format!("reading LoRA {what} of {name}"))
                };
                let rank = lora.a.dim(0).context(format!("LoRA A of {name}"))?;
                let scale = lora.scale as f32;
                let b = host(&lora.b, "B")?.into_iter().map(|v| v * scale).collect();
                *slot = Some(ProjectionLora {
                    rank,
                    a: host(&lora.a, "A")?,
                    b,
                });
            }
            layers.push(layer);
        }
        Ok(Some(Self { layers }))
    }

    /// A resident adapter (the server's CPU layout, one pair per projection in `linear_layers()`
    /// order, A and B in f16) as the engines load it, B scaled by its scale times `scale`.
    pub fn from_resident(adapter: &ResidentAdapter, scale: f32) -> Result<Self> {
        let pairs = adapter.layers();
        if pairs.len() % PROJECTIONS.len() != 0 {
            return Err(Error::InvalidRequest(format!(
                "decode adapter {}: {} projections is not a whole number of layers of {}",
                adapter.name(),
                pairs.len(),
                PROJECTIONS.len()
            )));
        }
        let s = adapter.scale() * scale;
        let layers = pairs
            .chunks(PROJECTIONS.len())
            .map(|chunk| {
                let mut layer: [Option<ProjectionLora>; 7] = Default::default();
                for (slot, pair) in layer.iter_mut().zip(chunk) {
                    *slot = pair.as_ref().map(|p| ProjectionLora {
                        rank: p.rank(),
                        a: p.a_f32(),
                        b: p.b_f32_scaled(s),
                    });
                }
                layer
            })
            .collect();
        Ok(Self { layers })
    }

    /// The identity of the adapters attached to `linears`: the tensor ids of every A and B (an
    /// adapter swapped in or out changes it; weights changed in place, as a trainer's `Var`s are,
    /// do not: load those again explicitly).
    pub fn key_of(linears: &[(String, &Linear)]) -> Option<Vec<candle_core::TensorId>> {
        let ids: Vec<_> = linears
            .iter()
            .filter_map(|(_, l)| l.lora.as_ref())
            .flat_map(|l| [l.a.id(), l.b.id()])
            .collect();
        (!ids.is_empty()).then_some(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::random_values;
    use crate::gpu::decode::lora_reference::LoraGroup;

    fn f32s(n: usize, seed: u64) -> Vec<f32> {
        random_values(n, seed, 1.0)
            .into_iter()
            .map(|v| v as f32)
            .collect()
    }

    /// Packed into a slot of rank 5, an adapter of rank 3 on q and v (k left alone) gives, through
    /// the kernels' reading of a group (segments, zero padding), exactly x A_p^T B_p^T on each
    /// projection's rows, and 0 on k's.
    #[test]
    #[allow(clippy::needless_range_loop)] // p indexes both the layer and the projection dims
    fn packed_qkv_group_reproduces_each_projection_delta() {
        let dims = AdapterDims {
            hidden: 8,
            q_out: 6,
            kv_out: 4,
            ffn: 12,
        };
        let (rank, slot_rank) = (3, 5);
        let lora = |p: usize, seed: u64| {
            let (inp, out) = dims.projection(p);
            Some(ProjectionLora {
                rank,
                a: f32s(rank * inp, seed),
                b: f32s(out * rank, seed + 1),
            })
        };
        let mut layer: [Option<ProjectionLora>; 7] = Default::default();
        layer[0] = lora(0, 1);
        layer[2] = lora(2, 3);
        let (a, b) = dims.pack(Group::Qkv, slot_rank, &layer).expect("pack");
        let g = dims.group(Group::Qkv, slot_rank);
        let x = f32s(dims.hidden, 9);
        let xn: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let group = LoraGroup {
            a: &a,
            b: &b,
            rank: slot_rank,
            e0: g.e0,
            e1: g.e1,
        };
        let zero_w = vec![0u8; g.b_rows * crate::gpu::decode::QuantType::Q8_0.row_bytes(32)];
        // Q8_0 needs k a multiple of 32: run the epilogue's reference on x padded to 32 with A
        // padded alike (zeros add nothing).
        let pad = |v: &[f32], rows: usize, k: usize| -> Vec<f32> {
            (0..rows)
                .flat_map(|r| {
                    let mut row = v[r * k..(r + 1) * k].to_vec();
                    row.resize(32, 0.0);
                    row
                })
                .collect()
        };
        let a32 = pad(&a, g.a_rows, g.k);
        let x32 = pad(&x, 1, g.k);
        let got = crate::gpu::decode::lora_reference::qmv_epilogue(
            crate::gpu::decode::QuantType::Q8_0,
            &zero_w,
            &x32,
            None,
            &vec![0f32; g.b_rows],
            false,
            None,
            Some(&LoraGroup { a: &a32, ..group }),
            crate::gpu::decode::reference::Activations::F32,
        );
        let mut row0 = 0;
        for p in 0..3 {
            let (inp, out) = dims.projection(p);
            for r in 0..out {
                let want = match &layer[p] {
                    Some(l) => (0..rank)
                        .map(|j| {
                            let xa: f64 = (0..inp).map(|c| l.a[j * inp + c] as f64 * xn[c]).sum();
                            xa * l.b[r * rank + j] as f64
                        })
                        .sum(),
                    None => 0.0,
                };
                let got = got[row0 + r];
                assert!(
                    (got - want).abs() < 1e-9,
                    "projection {p} row {r}: {got} vs {want}"
                );
            }
            row0 += out;
        }
    }

    /// A rank above the slots' is refused with the projection named.
    #[test]
    fn pack_refuses_a_rank_above_the_slot() {
        let dims = AdapterDims {
            hidden: 4,
            q_out: 4,
            kv_out: 2,
            ffn: 8,
        };
        let mut layer: [Option<ProjectionLora>; 7] = Default::default();
        layer[6] = Some(ProjectionLora {
            rank: 4,
            a: vec![0.5; 4 * 8],
            b: vec![0.5; 4 * 4],
        });
        let err = dims.pack(Group::Down, 2, &layer).unwrap_err().to_string();
        assert!(
            err.contains("mlp.down_proj") && err.contains("rank 4"),
            "{err}"
        );
    }
}
