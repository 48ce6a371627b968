//! One data-parallel optimizer step on Candle's autograd, and the sharded evaluation.
//!
//! Every rank builds the step's micro-batches exactly as a single-rank run does (the data position
//! is a function of the step), then takes its rows of each: rows `[r n / W, (r + 1) n / W)` of a
//! micro-batch of `n` rows for rank `r` of `W`. Its loss weight for a shard is the shard's share of
//! the step's counted tokens (the single-rank weight times the shard's share of its micro-batch),
//! so the ranks' weighted gradients sum to the single-rank gradient. One all-reduce (sum) of one
//! flat f32 buffer per step carries every adapter gradient, the weighted loss and a presence flag
//! per variable; every rank then clips and applies AdamW to identical gradients, so the adapters
//! stay identical without ever being broadcast.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use super::collective::{Collective, ReduceOp};
use crate::models::llama::Llama;
use crate::train::data::{Batch, Dataset};
use crate::train::loss::counted_positions;
use crate::train::optimizer::AdamW;
use crate::train::trainer::{
    accumulate_grads, apply_update, eval_totals, loss_weights, MaskSeeds, TrainConfig,
};
use crate::{Context, Result};

/// Rank `rank`'s rows of `batch` among `world` ranks, or `None` when it gets none (fewer rows
/// than ranks). The padding is kept: a row's tokens and labels are as in the whole batch.
pub fn shard_rows(batch: &Batch, rank: usize, world: usize) -> Option<Batch> {
    let rows = batch.input_ids.len();
    let (start, end) = (rows * rank / world, rows * (rank + 1) / world);
    (end > start).then(|| Batch {
        input_ids: batch.input_ids[start..end].to_vec(),
        labels: batch.labels[start..end].to_vec(),
    })
}

/// This rank's shards of the step's micro-batches with their loss weights (shares of the step's
/// counted tokens); shards without a counted token are left out.
pub fn weighted_shards(
    micro: &[(Batch, Vec<usize>)],
    rank: usize,
    world: usize,
) -> Vec<(Batch, f64)> {
    micro
        .iter()
        .zip(loss_weights(micro))
        .filter_map(|((batch, _), weight)| {
            let shard = shard_rows(batch, rank, world)?;
            let counted = counted_positions(&shard.labels);
            let share = counted as f64 / counted_positions(&batch.labels).max(1) as f64;
            (counted > 0).then_some((shard, weight? * share))
        })
        .collect()
}

/// One optimizer step of a data-parallel run; returns (global loss, gradient norm before
/// clipping), the same on every rank.
#[allow(clippy::too_many_arguments)]
pub(crate) fn data_parallel_step(
    model: &Llama,
    vars: &[(String, Var)],
    optimizer: &mut AdamW,
    config: &TrainConfig,
    micro: &[(Batch, Vec<usize>)],
    lr: f64,
    collective: &dyn Collective,
    masks: Option<MaskSeeds>,
) -> Result<(f64, f64)> {
    let shards = weighted_shards(micro, collective.rank(), collective.world_size());
    let weighted: Vec<(&Batch, f64)> = shards.iter().map(|(b, w)| (b, *w)).collect();
    // Each rank's shards draw their own masks (micro-batch indices a million apart per rank).
    let masks = masks.map(|m| MaskSeeds {
        first_micro: m.first_micro + collective.rank() as u64 * 1_000_000,
        ..m
    });
    let (grads, local_loss) = accumulate_grads(model, vars, config, &weighted, masks)?;
    let flat = flatten_grads(vars, &grads, local_loss, model.device())?;
    let reduced = collective.all_reduce(&flat, ReduceOp::Sum)?;
    let (grads, step_loss) = unflatten_grads(vars, &reduced)?;
    apply_update(grads, step_loss, optimizer, config, lr)
}

/// `[every variable's gradient (zeros where none), in `vars` order | loss | one presence flag per
/// variable]` as one f32 vector on `device`.
pub fn flatten_grads(
    vars: &[(String, Var)],
    grads: &HashMap<String, Tensor>,
    loss: f64,
    device: &Device,
) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(vars.len() + 2);
    let mut present = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let part = match grads.get(name) {
            Some(g) => g.to_dtype(DType::F32).and_then(|g| g.flatten_all()),
            None => Tensor::zeros(var.elem_count(), DType::F32, device),
        };
        parts.push(part.context(format!("flattening the gradient of {name}"))?);
        present.push(if grads.contains_key(name) { 1f32 } else { 0f32 });
    }
    parts.push(Tensor::new(&[loss as f32], device).context("step loss")?);
    parts.push(Tensor::new(present, device).context("gradient flags")?);
    Tensor::cat(&parts, 0).context("flat gradient buffer")
}

/// The inverse of [`flatten_grads`] after the reduction: the gradients (each in its variable's
/// shape and dtype; a variable no rank had a gradient for is left out, as a single-rank step
/// skips it) and the summed loss.
pub fn unflatten_grads(
    vars: &[(String, Var)],
    flat: &Tensor,
) -> Result<(HashMap<String, Tensor>, f64)> {
    let total: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let values = flat
        .to_device(&Device::Cpu)
        .and_then(|f| f.to_vec1::<f32>());
    let tail = values.context("reading the reduced buffer")?[total..].to_vec();
    let (loss, present) = match tail.split_first() {
        Some((loss, present)) if present.len() == vars.len() => (*loss as f64, present.to_vec()),
        _ => {
            return Err(crate::Error::InvalidRequest(format!(
                "reduced gradient buffer of {} values does not fit {} variables",
                flat.elem_count(),
                vars.len()
            )))
        }
    };
    let mut grads = HashMap::with_capacity(vars.len());
    let mut offset = 0;
    for ((name, var), flag) in vars.iter().zip(present) {
        let n = var.elem_count();
        if flag > 0.0 {
            let g = flat
                .narrow(0, offset, n)
                .and_then(|g| g.reshape(var.dims()))
                .and_then(|g| g.to_dtype(var.dtype()))
                .context(format!("gradient of {name}"))?;
            grads.insert(name.clone(), g);
        }
        offset += n;
    }
    Ok((grads, loss))
}

/// The eval loss of `data` in a data-parallel run: rank r evaluates batches r, r + W, ..., and one
/// all-reduce sums the token losses and counts.
pub(crate) fn evaluate_sharded(
    model: &Llama,
    data: &Dataset,
    batch_size: usize,
    collective: &dyn Collective,
) -> Result<f64> {
    let (rank, world) = (collective.rank(), collective.world_size());
    let batches = (rank..data.batches_per_epoch(batch_size)).step_by(world);
    let (total, count) = eval_totals(model, data, batch_size, batches)?;
    let local = Tensor::new(&[total as f32, count as f32], model.device()).context("eval sums")?;
    let sums = collective.all_reduce(&local, ReduceOp::Sum)?;
    let sums = sums.to_vec1::<f32>().context("reading the eval sums")?;
    Ok(sums[0] as f64 / (sums[1] as f64).max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::loss::IGNORE_INDEX;

    fn micro(labels: Vec<Vec<i64>>) -> (Batch, Vec<usize>) {
        let input_ids = labels.iter().map(|r| vec![1u32; r.len()]).collect();
        let lengths = labels.iter().map(Vec::len).collect();
        (Batch { input_ids, labels }, lengths)
    }

    /// The shards cover every row once, and their weights sum to the single-rank weights.
    #[test]
    fn shards_partition_rows_and_weights() {
        let i = IGNORE_INDEX;
        let step = vec![
            micro(vec![
                vec![1, 2, 3],
                vec![4, 5, i],
                vec![i, 6, 7],
                vec![8, i, i],
                vec![9, 9, 9],
            ]),
            micro(vec![vec![i, i, i], vec![3, 3, 3]]),
        ];
        let single: f64 = loss_weights(&step).iter().flatten().sum();
        for world in 1..=4 {
            for (batch, _) in &step {
                let joined: Vec<Vec<i64>> = (0..world)
                    .filter_map(|rank| shard_rows(batch, rank, world))
                    .flat_map(|shard| shard.labels)
                    .collect();
                assert_eq!(joined, batch.labels, "world {world}");
            }
            let weight: f64 = (0..world)
                .flat_map(|rank| weighted_shards(&step, rank, world))
                .map(|(_, w)| w)
                .sum();
            assert!(
                (weight - single).abs() < 1e-12,
                "world {world}: {weight} vs {single}"
            );
        }
    }

    #[test]
    fn flat_buffer_round_trips_and_marks_missing_gradients() {
        let dev = Device::Cpu;
        let var = |seed, shape: &[usize]| {
            let t = crate::check::random_tensor(shape, DType::F32, &dev, seed, 1.0).unwrap();
            Var::from_tensor(&t).unwrap()
        };
        let vars = vec![
            ("a".to_string(), var(1, &[2, 3])),
            ("b".to_string(), var(2, &[4])),
            ("c".to_string(), var(3, &[3, 1])),
        ];
        let mut grads = HashMap::new();
        grads.insert("a".to_string(), vars[0].1.as_tensor() * 2.0);
        grads.insert("c".to_string(), vars[2].1.as_tensor() * 3.0);
        let grads: HashMap<String, Tensor> =
            grads.into_iter().map(|(k, v)| (k, v.unwrap())).collect();
        let flat = flatten_grads(&vars, &grads, 1.25, &dev).unwrap();
        assert_eq!(flat.dims(), [6 + 4 + 3 + 1 + 3]);
        let (back, loss) = unflatten_grads(&vars, &flat).unwrap();
        assert_eq!(loss, 1.25);
        assert!(!back.contains_key("b"));
        for name in ["a", "c"] {
            let (x, y) = (&grads[name], &back[name]);
            assert_eq!(x.dims(), y.dims());
            let diff = (x - y).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        }
    }
}
