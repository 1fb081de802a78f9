"""What every benchmark script shares: saving and printing its result, the machine's matmul speed, and
running a Python process to its end with its resource use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def write_result(result: dict[str, Any], out: str | Path, detail: str | None = None) -> None:
    """Write ``result`` to ``out`` (creating its folder) and print it, leaving out the bulky ``detail`` key."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != detail}, indent=2))


def matmul_gflops(n: int = 4096, repeats: int = 10) -> float:
    """Best-of fp32 matmul GFLOP/s with every thread torch uses."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def run_python(args: list[str], env: dict[str, str] | None = None, quiet: bool = False):
    """``python ARGS`` in the project's root, run to its end: its resource use (``os.wait4``: peak
    memory, CPU seconds, page faults). Exits with one line if it fails; ``quiet``: no stdout."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL if quiet else None)
    _, status, usage = os.wait4(proc.pid, 0)
    if (code := os.waitstatus_to_exitcode(status)) != 0:
        raise SystemExit(f"error: python {' '.join(args)} exited with {code}")
    return usage
