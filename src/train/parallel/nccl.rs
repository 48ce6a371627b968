//! The NCCL collective: one communicator per GPU (`ncclCommInitAll`, every rank a thread of this
//! process) on Candle's stream of that device, so the all-reduce is ordered after the backward
//! pass that wrote the gradients without extra synchronisation.
//!
//! NCCL itself never gives up on a peer that does not arrive. Two guards keep a failure from
//! hanging the run: every operation first meets the other ranks at a host barrier of the
//! in-process collective (a rank that failed or died has aborted it, so nobody enqueues an
//! all-reduce that a peer will never join), and the wait for the enqueued operation polls an event
//! with the group's timeout (a rank that dies between the barrier and its enqueue); on timeout the
//! group is aborted and the communicator, dropped with the rank, aborts NCCL's kernels.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Device, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaStream, CudaView};
use cudarc::nccl::safe::{Comm, ReduceOp as NcclOp};

use super::collective::{check_flat, Collective, ReduceOp};
use super::local::LocalCollective;
use crate::{Error, Result};

/// One rank's NCCL communicator with the in-process control plane of its group.
pub struct NcclCollective {
    comm: RankComm,
    device: CudaDevice,
    control: LocalCollective,
    timeout: Duration,
}

/// A communicator moved once to its rank's thread and used only there.
struct RankComm(Comm);

// SAFETY: an NCCL communicator may be used from any thread as long as one thread at a time uses
// it; each `RankComm` is created on the runner's thread, moved to its rank's thread and only used
// there (cudarc's `Comm` is `!Send` only because it holds a raw pointer).
unsafe impl Send for RankComm {}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::InvalidRequest(format!("NCCL: {what}: {e:?}"))
}

impl NcclCollective {
    /// One collective per device of `devices` (distinct CUDA devices, rank i on `devices[i]`).
    pub fn group(devices: &[Device], timeout: Duration) -> Result<Vec<Box<dyn Collective>>> {
        let cuda: Vec<CudaDevice> = devices
            .iter()
            .map(|d| d.as_cuda_device().cloned())
            .collect::<candle_core::Result<_>>()?;
        let streams: Vec<Arc<CudaStream>> = cuda.iter().map(CudaDevice::cuda_stream).collect();
        let comms = Comm::from_devices(streams).map_err(|e| {
            nccl_err(
                &format!("creating communicators for {} GPUs", cuda.len()),
                e,
            )
        })?;
        let controls = LocalCollective::group(devices.len(), timeout);
        Ok(comms
            .into_iter()
            .zip(cuda)
            .zip(controls)
            .map(|((comm, device), control)| {
                Box::new(NcclCollective {
                    comm: RankComm(comm),
                    device,
                    control,
                    timeout,
                }) as Box<dyn Collective>
            })
            .collect())
    }

    /// Runs `enqueue(input, output)` on the communicator after the host barrier and waits for it
    /// with the group's timeout; returns the output as a new tensor.
    fn run(
        &self,
        flat: &Tensor,
        what: &str,
        enqueue: impl FnOnce(&Comm, &CudaView<f32>, &mut CudaSlice<f32>) -> Result<()>,
    ) -> Result<Tensor> {
        let len = check_flat(flat, what)?;
        self.control.barrier()?;
        let flat = flat.contiguous()?;
        let stream = self.device.cuda_stream();
        // SAFETY: NCCL writes every element of the output before anything reads it.
        let mut output = unsafe { stream.alloc::<f32>(len) }.map_err(|e| nccl_err(what, e))?;
        {
            let (storage, layout) = flat.storage_and_layout();
            let Storage::Cuda(input) = &*storage else {
                return Err(Error::InvalidRequest(format!(
                    "{what}: the buffer is not on a CUDA device"
                )));
            };
            let start = layout.start_offset();
            let input = input.as_cuda_slice::<f32>()?.slice(start..start + len);
            enqueue(&self.comm.0, &input, &mut output)?;
        }
        self.wait(&stream, what)?;
        let storage = CudaStorage::wrap_cuda_slice(output, self.device.clone());
        Ok(Tensor::from_storage(
            Storage::Cuda(storage),
            len,
            BackpropOp::none(),
            false,
        ))
    }

    /// Polls the work enqueued so far on `stream` until done or the timeout; aborts the group on
    /// timeout (the peers' barrier and NCCL calls then fail too).
    fn wait(&self, stream: &CudaStream, what: &str) -> Result<()> {
        let event = stream.record_event(None).map_err(|e| nccl_err(what, e))?;
        let started = Instant::now();
        let mut pause = Duration::from_micros(20);
        while !event.try_is_complete().map_err(|e| nccl_err(what, e))? {
            if started.elapsed() > self.timeout {
                let reason = format!(
                    "{what} did not complete within {:.0?} on NCCL",
                    self.timeout
                );
                self.control.abort(&reason);
                return Err(super::collective::rank_failed(
                    self.rank(),
                    self.world_size(),
                    reason,
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        Ok(())
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.control.rank()
    }

    fn world_size(&self) -> usize {
        self.control.world_size()
    }

    fn all_reduce(&self, flat: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let op = match op {
            ReduceOp::Sum => NcclOp::Sum,
            ReduceOp::Mean => NcclOp::Avg,
        };
        self.run(flat, "all-reduce", |comm, input, output| {
            comm.all_reduce(input, output, &op)
                .map(|_| ())
                .map_err(|e| nccl_err("all-reduce", e))
        })
    }

    fn broadcast(&self, flat: &Tensor, root: usize) -> Result<Tensor> {
        self.run(flat, "broadcast", |comm, input, output| {
            comm.broadcast(Some(input), output, root as i32)
                .map(|_| ())
                .map_err(|e| nccl_err("broadcast", e))
        })
    }

    fn barrier(&self) -> Result<()> {
        self.control.barrier()
    }

    fn abort(&self, reason: &str) {
        self.control.abort(reason)
    }
}
