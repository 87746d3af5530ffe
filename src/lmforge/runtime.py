"""The runtime: which device and dtype to use, and what this machine can do.

One place for every stage (training, evaluation, the engine, design estimates): device names
are resolved and refused here, and the matmul peak that MFU and time estimates divide by is
measured here, on this hardware rather than from a data sheet.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

import torch

from lmforge.errors import LmforgeError


def auto_device() -> torch.device:
    """CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 where the hardware has fast bf16 matmul (CUDA with bf16 support); fp32 elsewhere.

    CPUs without AMX/avx512_bf16 run bf16 matmul ~100x slower than fp32, so CPUs stay fp32.
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass(frozen=True)
class MatmulPeak:
    device: str
    dtype: str
    size: int
    flops_per_second: float


def measure_matmul_peak(device: torch.device | None = None, dtype: torch.dtype | None = None,
                        size: int | None = None, seconds: float = 0.5) -> MatmulPeak:
    """Best-of-N throughput of a square matmul: the practical peak that MFU is measured against.

    CPU: 1024x1024 in fp32, each call timed on its own (a call takes milliseconds). GPU: a
    matmul big enough to fill the device (8192x8192, in the training dtype: bf16 where it is
    fast), timed with device events over a burst of calls, so neither launch overhead nor a
    host sync per call is counted; a small matmul with a sync each time runs far below the
    device's peak and would make MFU look higher than it is.
    """
    device = device or auto_device()
    dtype = dtype or default_dtype_for(device)
    if device.type == "cuda":
        size = size or 8192
        return _cuda_peak(device, dtype, size, seconds)
    size = size or 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):  # warm-up: thread pools, kernels, caches
        a @ b
    _sync(device)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return MatmulPeak(str(device), str(dtype).removeprefix("torch."), size, 2 * size**3 / best)


def _cuda_peak(device: torch.device, dtype: torch.dtype, size: int,
               seconds: float) -> MatmulPeak:
    # Events record on the current device's stream: make `device` current, or on cuda:1 they
    # would time cuda:0's (idle) stream and report an impossible peak.
    with torch.cuda.device(device):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        out = torch.empty(size, size, device=device, dtype=dtype)
        for _ in range(3):  # warm-up: cuBLAS handle, workspace, kernel choice
            torch.matmul(a, b, out=out)
        torch.cuda.synchronize(device)
        burst, best, bursts = 10, float("inf"), 0
        deadline = time.perf_counter() + seconds
        while bursts < 3 or time.perf_counter() < deadline:  # a few bursts however short
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(burst):
                torch.matmul(a, b, out=out)
            end.record()
            end.synchronize()
            best = min(best, begin.elapsed_time(end) / 1000 / burst)
            bursts += 1
    return MatmulPeak(str(device), str(dtype).removeprefix("torch."), size, 2 * size**3 / best)


def cpu_name() -> str:
    """The CPU's model name, for benchmark reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(name: str | None) -> torch.device:
    """A device from its name ("auto", "cpu", "cuda", "cuda:1", "mps"), refused with a clear
    message where this machine lacks it."""
    if name in (None, "auto"):
        return auto_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise LmforgeError(f"unknown device {name!r}",
                           hint="use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LmforgeError(f"device {name!r} asked for, but this torch has no usable CUDA",
                           hint="use --device cpu (or auto), or install a CUDA build of torch")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise LmforgeError(f"device {name!r}: this machine has {torch.cuda.device_count()} "
                           "CUDA device(s)", hint="pick an index below that")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise LmforgeError("device 'mps' asked for, but MPS is not available here",
                           hint="use --device cpu (or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise LmforgeError(f"device {name!r} is not supported", hint="use cpu, cuda or mps")
    return device
