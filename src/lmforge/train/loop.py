"""The training loop: one loop for every stage; the objective decides what is learned and the
batch source what it reads.

Per step: set the scheduled learning rate, accumulate gradients over the step's micro-batches
(each weighted by its share of the step's real tokens, so the step's loss is the mean over all
of them however they were split), clip, step the optimizers (the model's parameters and those
the objective owns); every so often validate, sample and checkpoint. A step's data is a pure
function of (seed, step), so a resumed run continues exactly where a checkpoint left it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from lmforge.design.estimate import training_flops_per_token
from lmforge.errors import Interrupted, LmforgeError
from lmforge.model.io import savable_state
from lmforge.model.transformer import Transformer
from lmforge.runtime import default_dtype_for, measure_matmul_peak, resolve_device
from lmforge.train import distributed as parallel
from lmforge.train.batches import Batch, BatchSource
from lmforge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from lmforge.train.distributed import Cluster, StepModule
from lmforge.train.objectives import NextToken, Objective, owned_parameters
from lmforge.train.optim import build_optimizers
from lmforge.train.progress import MetricsLog, TrainProgress
from lmforge.train.schedule import lr_multiplier
from lmforge.train.settings import TrainSettings


@dataclass
class TrainResult:
    steps: int
    tokens: int
    train_loss: float | None
    val_loss: float | None  # the best validation loss seen
    best_step: int | None
    seconds: float
    stopped_early: bool
    history: list[dict] = field(default_factory=list)


def autocast_dtype(s: TrainSettings, device: torch.device) -> torch.dtype | None:
    if s.dtype == "bfloat16" or (s.dtype == "auto" and default_dtype_for(device) == torch.bfloat16):
        return torch.bfloat16
    return None


@torch.no_grad()
def evaluate(model: Transformer, objective: Objective, source: BatchSource,
             device: torch.device, amp: torch.dtype | None) -> dict[str, float]:
    """Validation loss and the objective's metrics, each a mean weighted by real tokens."""
    return evaluate_replica(StepModule(model, objective), source, device, amp, Cluster())


@torch.no_grad()
def evaluate_replica(replica: torch.nn.Module, source: BatchSource, device: torch.device,
                     amp: torch.dtype | None, cluster: Cluster) -> dict[str, float]:
    """`evaluate` through the module training calls (a DDP or FSDP replica too): rank r
    takes validation batches r, r + N, ...; a rank short of one runs a batch at weight 0, as
    sharded weights need every rank in every forward; the sums meet in one all-reduce."""
    replica.eval()
    every = list(source.validation_batches(device))
    rounds = -(-len(every) // cluster.world)
    mine = [(b, 1.0) for b in every[cluster.rank::cluster.world]]
    mine += [(every[0], 0.0)] * (rounds - len(mine))
    sums: dict[str, float] = {}
    tokens = 0.0
    for batch, weight in mine:
        with _autocast(device, amp):
            loss, metrics = replica(batch)
        for name, value in {"loss": loss.item(), **metrics}.items():
            sums[name] = sums.get(name, 0.0) + value * batch.tokens * weight
        tokens += batch.tokens * weight
    replica.train()
    names = list(sums)
    totals = parallel.all_sum([sums[n] for n in names] + [tokens], cluster)
    return {name: total / max(1.0, totals[-1]) for name, total in zip(names, totals)}


def _autocast(device: torch.device, amp: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()


@contextlib.contextmanager
def _stop_requests():
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second Ctrl-C is immediate."""
    flag = {"stop": False}
    previous = {}

    def handler(signum, frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not in the main thread: no handlers
            previous[sig] = signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def train(model: Transformer, objective: Objective, source: BatchSource, s: TrainSettings,
          run_dir: Path, sample: Callable[[Transformer], list[str]] | None = None,
          on_step: Callable[[int], None] | None = None,
          show_progress: bool = True) -> TrainResult:
    """Train `model` in place (its whole weights on return) and return the run's figures.

    Under torchrun the processes train together (train/distributed.py): rank 0 returns, the
    others end their process when the loop is done, as they have nothing left to do."""
    device = resolve_device(s.device)
    cluster, device = parallel.join(device)
    try:
        result = _train(model, objective, source, s, Path(run_dir), device, cluster, sample,
                        on_step, show_progress and cluster.main)
    except BaseException:
        if cluster.distributed and dist.is_initialized():
            dist.destroy_process_group()  # no barrier: a peer may be gone
        raise
    parallel.leave(cluster)
    if not cluster.main:
        raise SystemExit(0)
    return result


def _train(model: Transformer, objective: Objective, source: BatchSource, s: TrainSettings,
           run_dir: Path, device: torch.device, cluster: Cluster,
           sample: Callable[[Transformer], list[str]] | None,
           on_step: Callable[[int], None] | None, show_progress: bool) -> TrainResult:
    parallel.check_parallel(cluster, s.accumulation, s.fsdp, s.optimizer)
    sharded = cluster.distributed and s.fsdp
    amp = autocast_dtype(s, device)
    if not sharded:  # FSDP moves each rank's shards to the device; the whole stays put
        model.to(device)
        if isinstance(objective, torch.nn.Module):
            objective.to(device)
    model.train()
    if isinstance(objective, torch.nn.Module):
        objective.train()
    model.checkpoint_activations = s.activation_checkpointing
    if s.compile:  # per-block ("regional") compile: seconds to compile, same state dict keys
        model.compile_blocks()
    whole_step = StepModule(model, objective)
    # Objectives other than next-token leave the output head unused (reward) or may skip
    # parameters: DDP must then look for them each step rather than wait for their gradients.
    replica = parallel.wrap(whole_step, cluster, device, s.fsdp, amp,
                   find_unused=not isinstance(objective, NextToken))
    trained = parallel.inner(replica)  # the whole step, or its sharded copy
    owned = owned_parameters(trained.loss_fn)
    whole_owned = owned_parameters(objective)
    optimizers = build_optimizers(trained.model, s.optimizer, s.lr, s.weight_decay,
                                  (s.beta1, s.beta2), s.muon_lr, device,
                                  extra=list(owned.values()))
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    parameters = [*trained.model.parameters(), *owned.values()]
    total = s.total_steps(source.tokens)
    log = MetricsLog(run_dir / "metrics.jsonl") if cluster.main else None
    # JSON-able (it goes into every checkpoint): None until there is a value.
    state = {"elapsed": 0.0, "best_val": None, "best_step": None, "bad_evals": 0,
             "train_loss": None, "val_loss": None, "tokens": 0}
    start = 0
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        saved = load_checkpoint(ckpt, model, optimizers, whole_owned)
        if sharded:  # every rank read the whole checkpoint: each keeps its shards
            parallel.scatter_into(replica, whole_step)
            parallel.shard_optimizer_states(optimizers)
        start, state = saved["step"], {**state, **saved["loop"]}
        if show_progress:
            print(f"resuming {run_dir.name} from its checkpoint at step {start}", flush=True)
    if log is not None:
        log.truncate_after(start)  # lines written after the checkpoint belong to a lost future
    flops = training_flops_per_token(model.design, s.seq_len)
    peak = measure_matmul_peak(device, amp or torch.float32, seconds=0.3).flops_per_second
    progress = TrainProgress(total, start, enabled=show_progress,
                             unit=getattr(source, "unit", "tok"))
    stopped_early = False
    done = start

    def gather() -> list[dict] | None:
        """Sharded: the whole weights into `model` and the optimizer states (collectives)."""
        if not sharded:
            return None
        parallel.gather_into(whole_step, replica)
        return parallel.gather_optimizer_states(optimizers, keep=cluster.main)

    def checkpoint(step: int) -> None:
        states = gather()
        if cluster.main:
            save_checkpoint(run_dir, step, model, optimizers, {"loop": state}, whole_owned,
                            optimizer_states=states)
        if cluster.distributed:
            dist.barrier()  # a stop right after returns with the checkpoint on disk

    with _stop_requests() as stop, progress:
        for step in range(start, total):
            t0 = time.perf_counter()
            mult = lr_multiplier(step, total, s.warmup_steps, s.schedule, s.min_lr_ratio)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * mult
            if cluster.distributed:
                batches = source.step_batches(step, s.seed, device,
                                              part=(cluster.rank, cluster.world))
            else:
                batches = source.step_batches(step, s.seed, device)
            step_tokens = int(parallel.all_sum([sum(b.tokens for b in batches)], cluster)[0])
            # MFU counts every position the model computed (padding and prompts too): that
            # is what the hardware did; tokens/s counts the learned tokens.
            positions = sum(b["inputs"].numel() for b in batches)
            loss_sum = 0.0
            train_metrics: dict[str, float] = {}
            passes = weighted_passes(batches, step_tokens, cluster)
            for i, (batch, share) in enumerate(passes):
                with parallel.sync_gradients(replica, last=i == len(passes) - 1):
                    with _autocast(device, amp):
                        loss, metrics = replica(batch)
                        loss = loss * share
                    # DDP and FSDP average gradients over ranks; the shares already sum to
                    # one over all of them, so undo the average.
                    (loss * cluster.world).backward()
                loss_sum += loss.item()
                for name, value in metrics.items():
                    train_metrics[name] = train_metrics.get(name, 0.0) + value * share
            names = list(train_metrics)
            summed = parallel.all_sum([loss_sum, *(train_metrics[n] for n in names)], cluster)
            loss_sum, train_metrics = summed[0], dict(zip(names, summed[1:]))
            if not math.isfinite(loss_sum):
                raise LmforgeError(f"training diverged at step {step + 1} (loss {loss_sum})",
                                   hint="lower the learning rate or raise warmup_steps")
            norm = torch.nn.utils.clip_grad_norm_(parameters, s.grad_clip)
            grad_norm = float(parallel.whole(norm))
            for opt in optimizers:
                opt.step()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            done = step + 1
            seconds = time.perf_counter() - t0
            state["elapsed"] += seconds
            state["train_loss"] = loss_sum
            state["tokens"] += step_tokens
            tokens_per_s = step_tokens / seconds
            record = {"step": step + 1, "loss": loss_sum, **train_metrics, "lr_mult": mult,
                      "grad_norm": grad_norm, "tokens": state["tokens"],
                      "tokens_per_s": tokens_per_s,
                      "mfu": positions / seconds * flops / peak,  # this rank's device
                      "elapsed_s": state["elapsed"]}
            last = step + 1 == total
            if (step + 1) % s.eval_every == 0 or last:
                # A peak measured while other work held the cores is too low and would show
                # MFU above 100%: measure again now and then, keep the best.
                peak = max(peak, measure_matmul_peak(device, amp or torch.float32,
                                                     seconds=0.1).flops_per_second)
                measured = evaluate_replica(replica, source, device, amp, cluster)
                val = measured["loss"]
                record.update({f"val_{name}": value for name, value in measured.items()})
                state["val_loss"] = val
                if state["best_val"] is None or val < state["best_val"]:
                    state.update(best_val=val, best_step=step + 1, bad_evals=0)
                    gather()
                    if cluster.main:
                        save_best(model, run_dir)
                else:
                    state["bad_evals"] += 1
                progress.note(record)
                stopped_early = bool(s.early_stop_patience) and \
                    state["bad_evals"] >= s.early_stop_patience
            # Sampling needs the whole weights on one rank: not while they are sharded.
            if sample is not None and s.sample_every and (step + 1) % s.sample_every == 0 \
                    and cluster.main and not sharded:
                record["samples"] = sample(model)
                progress.samples(record["samples"])
            if log is not None:
                log.write(record)
            progress.update(record)
            if on_step is not None:
                on_step(step + 1)
            if (step + 1) % s.checkpoint_every == 0 or last or stopped_early:
                checkpoint(step + 1)
            if stopped_early:
                progress.message(f"validation loss has not improved for "
                                 f"{s.early_stop_patience} evaluations: stopping at step "
                                 f"{step + 1}; keeping step {state['best_step']}")
                break
            # A stop asked of any rank (torchrun passes signals to all, but not at the same
            # instant) stops every rank at this step.
            if parallel.all_sum([float(stop["stop"])], cluster)[0] > 0:
                checkpoint(step + 1)
                raise Interrupted(f"stopped at step {step + 1}; checkpoint saved")
    gather()  # sharded: `model` leaves with the trained weights
    return TrainResult(steps=done, tokens=state["tokens"],
                       train_loss=state["train_loss"], val_loss=state["best_val"],
                       best_step=state["best_step"], seconds=state["elapsed"],
                       stopped_early=stopped_early,
                       history=log.read() if log is not None else [])


def weighted_passes(batches: list[Batch], step_tokens: int, cluster: Cluster
                    ) -> list[tuple[Batch, float]]:
    """(micro-batch, its share of the step's real tokens over all ranks) for each forward.
    Alone, a micro-batch with nothing to learn (all prompt, all padding) is skipped. Across
    ranks every rank must run as many passes as the others (each backward joins a gradient
    reduction), so it runs one of its learning micro-batches again at weight 0 instead."""
    if not cluster.distributed:
        return [(b, b.tokens / step_tokens) for b in batches if b.tokens > 0]
    learning = [b for b in batches if b.tokens > 0]
    if len(learning) < len(batches) and not learning:
        raise LmforgeError(f"rank {cluster.rank} got a step whose micro-batches hold nothing "
                           "to learn", hint="raise micro_batch, or run on fewer processes")
    return [(b, b.tokens / step_tokens) if b.tokens > 0 else (learning[0], 0.0)
            for b in batches]


def save_best(model: Transformer, run_dir: Path) -> None:
    """The weights with the lowest validation loss so far (what early stopping keeps)."""
    tmp = run_dir / "best.safetensors.tmp"
    save_file(savable_state(model), str(tmp))
    tmp.replace(run_dir / "best.safetensors")
