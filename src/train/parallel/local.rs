//! The in-process collective: ranks are threads of one process that meet at a shared rendezvous
//! (a mutex and a condition variable). Buffers travel through host memory, so it works for ranks
//! on any device (tensors are copied to the host and back); the tests and CPU data-parallel runs
//! use it, and the NCCL collective reuses it as its control plane (barrier, abort, timeouts).
//!
//! Each operation is one round: every rank deposits its buffer; the last to arrive combines them
//! (in rank order, so every rank gets the same bits), publishes the result and wakes the others.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::collective::{check_flat, rank_failed, Collective, ReduceOp};
use crate::{Context, Result};

/// One rank's handle on an in-process group (see [`LocalCollective::group`]).
pub struct LocalCollective {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    world_size: usize,
    timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

/// What a rank asked for in a round; every rank of a round must ask for the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    AllReduce(ReduceOp),
    Broadcast(usize),
    Barrier,
}

struct State {
    /// Rounds completed so far.
    round: u64,
    /// This round's deposits, by rank.
    arrivals: Vec<Option<(Op, Vec<f32>)>>,
    /// The last completed round's result.
    result: Arc<Vec<f32>>,
    /// The first failure: (rank, reason).
    failed: Option<(usize, String)>,
}

impl LocalCollective {
    /// A group of `world_size` ranks (one handle per rank, in rank order) whose operations wait
    /// at most `timeout` for the other ranks.
    pub fn group(world_size: usize, timeout: Duration) -> Vec<LocalCollective> {
        let shared = Arc::new(Shared {
            world_size,
            timeout,
            state: Mutex::new(State {
                round: 0,
                arrivals: vec![None; world_size],
                result: Arc::new(Vec::new()),
                failed: None,
            }),
            changed: Condvar::new(),
        });
        (0..world_size)
            .map(|rank| LocalCollective {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; a poisoned one still holds consistent state.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failure(&self, failed: &(usize, String)) -> crate::Error {
        rank_failed(failed.0, self.shared.world_size, failed.1.clone())
    }

    /// Deposits `data` for `op` and returns the round's result once every rank has arrived.
    fn exchange(&self, op: Op, data: Vec<f32>) -> Result<Arc<Vec<f32>>> {
        let mut state = self.lock();
        if let Some(failed) = &state.failed {
            return Err(self.failure(failed));
        }
        state.arrivals[self.rank] = Some((op, data));
        if state.arrivals.iter().all(Option::is_some) {
            return self.complete_round(&mut state);
        }
        let round = state.round;
        let deadline = Instant::now() + self.shared.timeout;
        loop {
            if state.round != round {
                return Ok(state.result.clone());
            }
            if let Some(failed) = &state.failed {
                return Err(self.failure(failed));
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> = (0..self.shared.world_size)
                    .filter(|r| state.arrivals[*r].is_none())
                    .collect();
                let reason = format!(
                    "did not reach the collective operation within {:.0?} (ranks {missing:?} \
                     missing; rank {} gave up waiting)",
                    self.shared.timeout, self.rank
                );
                let failed = (missing.first().copied().unwrap_or(self.rank), reason);
                let error = self.failure(&failed);
                state.failed = Some(failed);
                self.shared.changed.notify_all();
                return Err(error);
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// The last rank of a round combines the deposits, publishes the result and wakes the others.
    fn complete_round(&self, state: &mut State) -> Result<Arc<Vec<f32>>> {
        let deposits: Vec<(Op, Vec<f32>)> =
            state.arrivals.iter_mut().flat_map(Option::take).collect();
        match combine(&deposits) {
            Ok(result) => {
                state.result = Arc::new(result);
                state.round += 1;
                self.shared.changed.notify_all();
                Ok(state.result.clone())
            }
            Err(reason) => {
                let failed = (self.rank, reason);
                let error = self.failure(&failed);
                state.failed = Some(failed);
                self.shared.changed.notify_all();
                Err(error)
            }
        }
    }

    fn exchange_tensor(&self, op: Op, flat: &Tensor, what: &str) -> Result<Tensor> {
        let len = check_flat(flat, what)?;
        let data = flat
            .to_vec1::<f32>()
            .context(format!("{what}: reading the buffer"))?;
        let result = self.exchange(op, data)?;
        Tensor::from_slice(result.as_slice(), len, flat.device())
            .context(format!("{what}: writing the result"))
    }
}

/// The result of one round from every rank's deposit (rank order), or why the ranks disagree.
fn combine(deposits: &[(Op, Vec<f32>)]) -> std::result::Result<Vec<f32>, String> {
    let (op, first) = &deposits[0];
    let mismatch = deposits
        .iter()
        .position(|(o, d)| o != op || d.len() != first.len());
    if let Some(rank) = mismatch {
        let (other_op, other) = &deposits[rank];
        return Err(format!(
            "ranks called different collective operations: rank 0 {op:?} of {} values, rank {rank} \
             {other_op:?} of {} values",
            first.len(),
            other.len()
        ));
    }
    Ok(match op {
        Op::Barrier => Vec::new(),
        Op::Broadcast(root) => match deposits.get(*root) {
            Some((_, data)) => data.clone(),
            None => return Err(format!("broadcast from rank {root} of {}", deposits.len())),
        },
        Op::AllReduce(reduce) => {
            let mut sum = first.clone();
            for (_, data) in &deposits[1..] {
                for (acc, v) in sum.iter_mut().zip(data) {
                    *acc += v;
                }
            }
            if *reduce == ReduceOp::Mean {
                let n = deposits.len() as f32;
                sum.iter_mut().for_each(|v| *v /= n);
            }
            sum
        }
    })
}

impl Collective for LocalCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world_size
    }

    fn all_reduce(&self, flat: &Tensor, op: ReduceOp) -> Result<Tensor> {
        self.exchange_tensor(Op::AllReduce(op), flat, "all-reduce")
    }

    fn broadcast(&self, flat: &Tensor, root: usize) -> Result<Tensor> {
        self.exchange_tensor(Op::Broadcast(root), flat, "broadcast")
    }

    fn barrier(&self) -> Result<()> {
        self.exchange(Op::Barrier, Vec::new()).map(|_| ())
    }

    fn abort(&self, reason: &str) {
        let mut state = self.lock();
        if state.failed.is_none() {
            state.failed = Some((self.rank, reason.to_string()));
        }
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Runs `f` on every rank of a fresh group, one thread each; results in rank order.
    fn on_ranks<T: Send>(
        world: usize,
        timeout: Duration,
        f: impl Fn(LocalCollective) -> T + Sync,
    ) -> Vec<T> {
        std::thread::scope(|s| {
            let handles: Vec<_> = LocalCollective::group(world, timeout)
                .into_iter()
                .map(|c| s.spawn(|| f(c)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn values(rank: usize, len: usize) -> Vec<f32> {
        crate::check::random_values(len, 100 + rank as u64, 3.0)
            .into_iter()
            .map(|v| v as f32)
            .collect()
    }

    #[test]
    fn all_reduce_sums_and_averages_in_rank_order() {
        for world in [1, 2, 3, 4] {
            let len = 37;
            let got = on_ranks(world, Duration::from_secs(30), |c| {
                let t = Tensor::new(values(c.rank(), len), &Device::Cpu).unwrap();
                let sum = c.all_reduce(&t, ReduceOp::Sum).unwrap();
                let mean = c.all_reduce(&t, ReduceOp::Mean).unwrap();
                (
                    sum.to_vec1::<f32>().unwrap(),
                    mean.to_vec1::<f32>().unwrap(),
                )
            });
            // f64 reference of the sum; f32 summation in rank order is within a few roundings.
            for i in 0..len {
                let want: f64 = (0..world).map(|r| values(r, len)[i] as f64).sum();
                for (sum, mean) in &got {
                    assert!((sum[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0));
                    let want_mean = want / world as f64;
                    assert!((mean[i] as f64 - want_mean).abs() <= 1e-5 * want_mean.abs().max(1.0));
                }
            }
            // Every rank holds the same bits.
            assert!(got.iter().all(|g| g == &got[0]), "world {world}");
        }
    }

    #[test]
    fn broadcast_and_barrier() {
        let got = on_ranks(3, Duration::from_secs(30), |c| {
            c.barrier().unwrap();
            let t = Tensor::new(values(c.rank(), 5), &Device::Cpu).unwrap();
            c.broadcast(&t, 2).unwrap().to_vec1::<f32>().unwrap()
        });
        assert!(got.iter().all(|g| g == &values(2, 5)));
    }

    #[test]
    fn an_aborting_rank_stops_every_rank_with_its_name() {
        let got = on_ranks(3, Duration::from_secs(60), |c| {
            if c.rank() == 1 {
                c.abort("out of memory on cuda:1");
                return c.barrier().unwrap_err().to_string();
            }
            c.barrier().unwrap_err().to_string()
        });
        for msg in got {
            assert!(
                msg.contains("rank 1 of 3") && msg.contains("out of memory"),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_missing_rank_times_out_instead_of_hanging() {
        let got = on_ranks(3, Duration::from_millis(200), |c| {
            if c.rank() == 2 {
                return None; // never joins
            }
            Some(c.barrier().unwrap_err().to_string())
        });
        for msg in got.into_iter().flatten() {
            assert!(
                msg.contains("rank 2 of 3") && msg.contains("[2] missing"),
                "{msg}"
            );
        }
    }

    #[test]
    fn mismatched_operations_are_reported() {
        let got = on_ranks(2, Duration::from_secs(30), |c| {
            let t = Tensor::new(values(c.rank(), 3 + c.rank()), &Device::Cpu).unwrap();
            c.all_reduce(&t, ReduceOp::Sum).unwrap_err().to_string()
        });
        for msg in got {
            assert!(msg.contains("different collective operations"), "{msg}");
        }
        let bad = Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap();
        let one = LocalCollective::group(1, Duration::from_secs(1)).remove(0);
        let msg = one.all_reduce(&bad, ReduceOp::Sum).unwrap_err().to_string();
        assert!(msg.contains("1-D f32"), "{msg}");
    }
}
