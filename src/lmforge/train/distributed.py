"""Data-parallel training on PyTorch's own engine: DDP, or FSDP2 for models that do not fit.

`torchrun --nproc_per_node N -m lmforge pretrain ...` starts N processes and sets RANK,
WORLD_SIZE and LOCAL_RANK; the loop then joins the process group (gloo on CPU, nccl on CUDA)
and trains one replica per process:
- DDP (the default): every rank holds the whole model; gradients are averaged across ranks
  once per optimizer step (the other micro-batches accumulate under `no_sync`).
- FSDP2 (`fsdp = true`): `fully_shard` on every block, then on the whole model, so each rank
  keeps 1/N of the parameters, gradients and optimizer states; bf16 parameters in compute
  with fp32 gradient reduction where the run trains in bf16.

The global batch stays the one `batch_tokens` says: rank r reads micro-batches r, r + N, ...
of each step (nothing else), and every micro-batch's loss is weighted by its share of the
step's real tokens over all ranks, so N processes compute the same step as one. Checkpoints
are gathered into the single-process files (checkpoint.py), so a run saved by N ranks
resumes with any number, one included. Rank 0 alone logs, shows progress and writes.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer
from lmforge.train.batches import Batch


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes (rank 0 of 1 when alone)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched_world() -> Cluster:
    """What torchrun (or any launcher setting its variables) says about this process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise LmforgeError("RANK, WORLD_SIZE and LOCAL_RANK must be integers",
                           hint="start distributed runs with torchrun") from None
    return Cluster(rank, world, local)


def join(device: torch.device) -> tuple[Cluster, torch.device]:
    """Join the launcher's process group (if there is one) and pick this rank's device."""
    cluster = launched_world()
    if not cluster.distributed:
        return cluster, device
    if device.type == "cuda":
        device = torch.device("cuda", cluster.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # A rank that dies leaves the others waiting in a collective: fail within minutes.
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10),
                                device_id=device if device.type == "cuda" else None)
    return cluster, device


def leave(cluster: Cluster) -> None:
    if cluster.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class StepModule(nn.Module):
    """The model and the objective as one module, so DDP and FSDP see every trained parameter
    (an objective's own head too) and hook the one forward that computes the loss: objectives
    call the model's methods (`hidden`, the head's weight), not only its forward."""

    def __init__(self, model: Transformer, objective):
        super().__init__()
        self.model = model
        if isinstance(objective, nn.Module):
            self.objective = objective
        object.__setattr__(self, "loss_fn", objective)  # not registered twice as a module

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(self.model, batch)

    def __deepcopy__(self, memo):
        model = copy.deepcopy(self.model, memo)
        objective = copy.deepcopy(self.loss_fn, memo)
        return StepModule(model, objective)


def check_parallel(cluster: Cluster, accumulation: int, fsdp: bool, optimizer: str) -> None:
    if not cluster.distributed:
        return
    if accumulation % cluster.world:
        raise LmforgeError(
            f"{cluster.world} processes share each step's {accumulation} micro-batches unevenly",
            hint="make batch_tokens / (micro_batch x seq_len) a multiple of the number of "
                 "processes (raise batch_tokens or lower micro_batch)")
    if fsdp and optimizer == "muon":
        raise LmforgeError("muon cannot train under fsdp: it orthogonalizes whole matrices and "
                           "each rank holds only a shard", hint="use --optimizer adamw with "
                                                                "--fsdp, or drop --fsdp (DDP)")


def wrap(step: StepModule, cluster: Cluster, device: torch.device, fsdp: bool,
         amp: torch.dtype | None, find_unused: bool) -> nn.Module:
    """The module the loop calls: `step` itself alone, else a DDP or FSDP2 replica. Under
    FSDP the replica is a copy (the caller's model stays whole: it is what gets saved)."""
    if not cluster.distributed:
        return step
    if not fsdp:
        # Buffers (rotary tables) are constants: nothing to broadcast every forward (the
        # option's name changed in torch 2.13).
        ddp = nn.parallel.DistributedDataParallel
        quiet = "forward_sync_buffers" if "forward_sync_buffers" in \
            inspect.signature(ddp).parameters else "broadcast_buffers"
        return ddp(step, find_unused_parameters=find_unused, **{quiet: False})
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    replica = copy.deepcopy(step)
    mesh = init_device_mesh(device.type, (cluster.world,))
    policy = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32) if amp \
        else MixedPrecisionPolicy()
    for block in replica.model.model.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(replica, mesh=mesh, mp_policy=policy)
    return replica


def inner(wrapped: nn.Module) -> StepModule:
    return wrapped.module if isinstance(wrapped, nn.parallel.DistributedDataParallel) else wrapped


def sync_gradients(wrapped: nn.Module, last: bool):
    """Reduce gradients on the step's last micro-batch only (accumulation without the
    all-reduces in between)."""
    if isinstance(wrapped, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if last else wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def all_sum(values: list[float], cluster: Cluster) -> list[float]:
    """Elementwise sums over ranks (float64, on CPU for gloo and nccl's sake alike)."""
    if not cluster.distributed:
        return values
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(t)
    return t.tolist()


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def whole(t: torch.Tensor) -> torch.Tensor:
    """A tensor's full value on every rank (a collective for a sharded one)."""
    return t.full_tensor() if is_sharded(t) else t


def gather_into(step: StepModule, replica: nn.Module) -> None:
    """Copy a sharded replica's parameters into the whole model and objective (every rank
    takes part in the gathers; each ends with the whole weights)."""
    source = dict(replica.named_parameters())
    with torch.no_grad():
        for name, p in step.named_parameters():
            p.copy_(whole(source[name]).to(p.device, p.dtype))


def scatter_into(replica: nn.Module, step: StepModule) -> None:
    """The reverse of gather_into: each rank cuts its shards from the whole weights (every
    rank holds them, read from the same checkpoint), no communication."""
    from torch.distributed.tensor import distribute_tensor
    source = dict(step.named_parameters())
    with torch.no_grad():
        for name, p in replica.named_parameters():
            value = source[name].to(p.device_mesh.device_type if is_sharded(p) else p.device)
            if is_sharded(p):
                value = distribute_tensor(value.to(p.dtype), p.device_mesh, p.placements,
                                          src_data_rank=None)
            p.copy_(value)


def gather_optimizer_states(optimizers: list[torch.optim.Optimizer], keep: bool
                            ) -> list[dict]:
    """Each optimizer's state dict with sharded states gathered whole (a collective every
    rank joins), one tensor at a time into host memory, kept by the writing rank (`keep`)
    only: whole AdamW states are 8 bytes per parameter, more than a device may spare."""
    out = []
    for opt in optimizers:
        sd = opt.state_dict()
        state: dict = {}
        for idx, values in sd["state"].items():
            gathered = {}
            for k, v in values.items():
                v = whole(v).cpu() if torch.is_tensor(v) else v
                gathered[k] = v
            if keep:
                state[idx] = gathered
        out.append({"state": state, "param_groups": sd["param_groups"]})
    return out


def shard_optimizer_states(optimizers: list[torch.optim.Optimizer]) -> None:
    """After loading whole states into optimizers of sharded parameters: cut each state
    tensor to its parameter's shard (every rank read the same whole values)."""
    from torch.distributed.tensor import distribute_tensor
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                if not is_sharded(p) or p not in opt.state:
                    continue
                for key, value in opt.state[p].items():
                    if torch.is_tensor(value) and value.shape == p.shape and \
                            not is_sharded(value):
                        opt.state[p][key] = distribute_tensor(
                            value.to(p.device_mesh.device_type), p.device_mesh, p.placements,
                            src_data_rank=None)
