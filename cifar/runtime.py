"""The runtime a run executes in: seeds, the device, mixed precision, and the torchrun job.

Everything here is per process and independent of the model: ``seed_everything``
seeds Python, NumPy and torch; ``resolve_device`` and ``resolve_amp`` turn the
config's ``device`` and ``amp`` strings into a torch device and an autocast dtype;
``init_distributed`` joins a torchrun job (gloo on CPU, nccl on CUDA) and
``all_reduce_sum`` sums metrics over its ranks.

Usage:
    seed_everything(cfg.seed, cfg.deterministic)
    device = resolve_device(cfg.device)
    autocast = autocast_factory(device, resolve_amp(cfg.amp, device))
    rank = init_distributed(cfg.device)
"""

from __future__ import annotations

import ctypes
import os
import platform
import random
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifar.config import AMP_MODES, TrainConfig

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt's parameter numbers (glibc's malloc.h)


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    """The memory layout a run gives its model and its batches (``channels_last``)."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    # cuDNN picks the fastest convolution algorithms for our fixed shapes (not bit-reproducible).
    torch.backends.cudnn.benchmark = not deterministic


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N as a device; under torchrun ``cuda`` is LOCAL_RANK's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per torchrun process
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def cpu_has_native_bf16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for --amp on this device, or None for fp32."""
    if mode not in AMP_MODES:
        raise ValueError(f"unknown amp {mode!r}; choose one of {', '.join(AMP_MODES)}")
    if mode == "off":
        return None
    if device.type == "cuda":
        # auto stays fp32 (cuDNN runs the convolutions in TF32): on an H200 these models are too small
        # for autocast to pay; bf16 trained the SmallCNN at 0.89x and fp16 at 0.61x of fp32
        # (bench/amp.py), and the fast recipe's epochs took 10-35% longer in either (bench/gpu.sh).
        if mode == "auto":
            return None
        return torch.bfloat16 if mode == "bf16" else torch.float16
    if mode == "fp16":
        raise ValueError("--amp fp16 needs CUDA; on a CPU use --amp bf16 (where supported) or off")
    if mode == "bf16" and not cpu_has_native_bf16():
        raise ValueError("--amp bf16 on CPU needs native bf16 (AVX512-BF16 or AMX); "
                         "this CPU emulates it, which is slower than fp32: use --amp off")
    # auto on CPU stays fp32: bench/amp.py measures whether bf16 pays on a given CPU.
    return torch.bfloat16 if mode == "bf16" else None


def keep_freed_memory(device: torch.device) -> str:
    """Have glibc's malloc keep what a training step frees, for the next step to reuse.

    A CPU training step allocates its activations (hundreds of MB at batch 512) and frees them.
    glibc serves blocks over 32 MB with a fresh ``mmap`` and unmaps them when freed, so every step
    maps its activations anew and the kernel faults in and zeroes each page again. Disabling
    ``mmap`` for allocations and the heap's trimming keeps the freed blocks in the heap, where the
    next step reuses them (``bench/allocator.py`` measures it). Not all of them: PyTorch allocates
    tensors 64-byte aligned (``posix_memalign``), and glibc 2.36 does not hand a freed block to an
    aligned request of the same size, so some activations still land in fresh pages (the benchmark's
    page faults: 14 times fewer, not none). The cost: the heap keeps its high water mark.
    Process-wide and idempotent; only for CPU runs (``device``), and ``CIFAR_MALLOC=system`` leaves
    malloc as it is. What was done, in words, for a run's provenance."""
    return _mallopt(device, ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)), "glibc, freed memory kept")


def return_freed_memory(device: torch.device) -> str:
    """``low_memory``'s malloc, the opposite of ``keep_freed_memory``: every block of 1 MB or more gets
    its own mapping, unmapped when freed, and what the heap holds free goes back to the system. The
    peak then follows what a step holds; glibc's own default (blocks up to 32 MB from the heap, which
    keeps their high-water mark) runs higher, keeping freed memory higher still (``bench/memory.py``).
    The price is the page faults ``keep_freed_memory`` saves. Process-wide; undoes an earlier
    ``keep_freed_memory`` (a study's earlier trial, say); CPU runs only; ``CIFAR_MALLOC=system`` leaves
    malloc as it is. What was done, in words, for a run's provenance."""
    return _mallopt(device, ((M_MMAP_MAX, 65536), (M_MMAP_THRESHOLD, 2**20), (M_TRIM_THRESHOLD, 2**20)),
                    "glibc, blocks of 1 MB and more returned when freed", trim=True)


def _mallopt(device: torch.device, settings: tuple[tuple[int, int], ...], done: str, trim: bool = False) -> str:
    """Set glibc malloc's ``settings`` ((mallopt parameter, value) pairs, in order) for a CPU run, unless
    ``CIFAR_MALLOC=system``; ``trim``: then hand the heap's free memory back. ``done`` or why not, in words."""
    if device.type != "cpu":
        return "system (not a CPU run)"
    if os.environ.get("CIFAR_MALLOC", "keep") == "system":
        return "system (CIFAR_MALLOC=system)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = all(libc.mallopt(param, value) == 1 for param, value in settings)
        if trim:
            libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its own allocator's defaults stay
        return "system (not glibc)"
    return done if applied else "system (mallopt refused)"


def device_name(device: torch.device) -> str:
    """The model of the chip behind ``device``: the GPU's name, or the CPU's as /proc/cpuinfo gives it
    (``platform.processor()``, its fallback, is often empty on Linux)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe_machine() -> str:
    """The machine in words, for records read by people: "2-core Intel(R) Xeon(R) Processor", plus
    the GPUs where there are any ("..., 1 x NVIDIA H200")."""
    text = f"{os.cpu_count()}-core {device_name(torch.device('cpu'))}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return text


def _code_version() -> tuple[str | None, bool | None]:
    """The commit checked out, and whether the project's code differs from it."""
    here = Path(__file__).parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=here, timeout=5).stdout.strip()
        commit = git("rev-parse", "HEAD") or None
        return commit, bool(git("status", "--porcelain", "--", "cifar", "study", "reports")) if commit else None
    except (OSError, subprocess.SubprocessError):
        return None, None


# Read once, when this process imports the code: a long process (a study) keeps running the code it
# loaded even when the checkout moves on, so its runs name that code, not the checkout's later HEAD.
LOADED_COMMIT, LOADED_DIRTY = _code_version()


def describe_runtime(device: torch.device) -> dict[str, Any]:
    """What a run's results depend on besides its config: code version, libraries, machine."""
    return {
        "git_commit": LOADED_COMMIT, "code_changed_since_commit": LOADED_DIRTY,
        "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "platform": platform.platform(), "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
    }


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], AbstractContextManager]:
    """A function returning a fresh autocast context for ``dtype`` (a no-op context for fp32)."""
    def autocast() -> AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    return autocast


# ---------------------------------------------------------------- torchrun


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the environment describes a torchrun job of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_name: str) -> Dist:
    """Join the torchrun job described by the environment (WORLD_SIZE, RANK, ...), once per process.

    gloo on CPU, nccl on CUDA; each rank uses the GPU numbered by LOCAL_RANK.
    """
    if not launched_by_torchrun():
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def is_distributed() -> bool:
    """Whether this process has joined a torchrun job (init_distributed ran with WORLD_SIZE > 1)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums over ranks (values unchanged outside a distributed job)."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def leave_distributed() -> None:
    """Leave the torchrun job, if this process joined one."""
    if is_distributed():
        torch.distributed.barrier()  # together: tearing down gloo under a peer that still talks to it can abort
        torch.distributed.destroy_process_group()
