"""2x2 max pooling that keeps one byte per output for the backward pass (CPU training, opt-in).

``nn.MaxPool2d(2)`` keeps its whole input and an int64 index per output until the
backward pass: at the first stage of ``configs/fast.json``, 358 MB of the 1.2 GB
that autograd keeps for a batch of 1024. With ``CIFAR_LOWMEM_POOL=1``,
``MaxPool2x2`` computes the same results, bit for bit, with a small C++ kernel
(``csrc/maxpool2x2.cpp``) that keeps which of each window's four inputs won, one
byte per output: a training run's peak memory drops by about a sixth at batch
1024, and a step is a few percent slower on 2 cores (``bench/memory.py``
measures both), which is why it is not the default. The kernel is built on first
use with PyTorch's JIT extension loader (a C++ compiler and ninja; about half a
minute, then cached in ``~/.cache/torch_extensions``). Where it cannot be built,
where the input is not float32 channels-last on a CPU, and outside training
(evaluation, export, FLOP counting), ``MaxPool2x2`` is ``max_pool2d``.

Usage:
    pool = MaxPool2x2()   # in place of nn.MaxPool2d(2)
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

SOURCE = Path(__file__).with_name("csrc") / "maxpool2x2.cpp"
ENV = "CIFAR_LOWMEM_POOL"  # "1": the kernel in training

_lock = threading.Lock()
_kernel: list[ModuleType | None] = []  # [] until the first attempt, then [module] or [None]


def enabled() -> bool:
    return os.environ.get(ENV, "0") == "1"


def kernel() -> ModuleType | None:
    """The compiled kernel, built (or found built) once per process; None where it cannot be."""
    with _lock:
        if not _kernel:
            _kernel.append(_build())
    return _kernel[0]


def _build() -> ModuleType | None:
    # Importing the loader logs that this CUDA build finds no CUDA runtime: true, and beside the point.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load
        return load(name="cifar_maxpool2x2", sources=[str(SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                    extra_ldflags=["-fopenmp"], verbose=False)  # OpenMP: at::parallel_for runs on torch's threads
    except Exception as e:  # no compiler, no ninja, a read-only cache: the standard pooling does the same work
        lines = str(e).strip().splitlines()
        warnings.warn(f"the low-memory max pooling kernel could not be built ({type(e).__name__}: "
                      f"{lines[0][:200] if lines else ''}); using max_pool2d, which keeps more memory for the "
                      f"backward pass", RuntimeWarning, stacklevel=3)
        return None


class _Pool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, won = _kernel[0].forward(x)
        ctx.save_for_backward(won)
        ctx.size = x.shape[2:]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (won,) = ctx.saved_tensors
        return _kernel[0].backward(grad, won, *ctx.size)


def _use_kernel(x: torch.Tensor, wanted: bool) -> bool:
    return ((wanted or enabled()) and x.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32 and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing() and kernel() is not None)


def max_pool2x2(x: torch.Tensor, wanted: bool = False) -> torch.Tensor:
    """``F.max_pool2d(x, 2)``: through the kernel where it saves memory for a backward pass and is
    wanted (``wanted``, or ``CIFAR_LOWMEM_POOL=1``)."""
    return _Pool.apply(x) if _use_kernel(x, wanted) else F.max_pool2d(x, 2)


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2)``, with the low-memory kernel in training where enabled (same results, bit for bit):
    by ``CIFAR_LOWMEM_POOL=1``, or for this module by ``use_kernel = True`` (what ``low_memory`` sets)."""

    use_kernel = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2x2(x, self.use_kernel) if self.training else F.max_pool2d(x, 2)
