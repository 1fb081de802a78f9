"""What every benchmark script shares: saving and printing its result, reading a committed one back and
its accuracies in percent (for the sentences a script writes for the docs), the machine's matmul speed,
and running a Python process to its end with its resource use."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "bench"  # the benchmarks' committed results files


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_result(result: dict[str, Any], out: str | Path, detail: str | None = None) -> None:
    """Write ``result`` to ``out`` (creating its folder) and print it, leaving out the bulky ``detail`` key."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != detail}, indent=2))


def read_result(name: str) -> dict:
    """A benchmark's committed results file, results/bench/<name>.json."""
    return json.loads((RESULTS / f"{name}.json").read_text())


def pct(pair: list) -> str:
    """An accuracy's [mean, std] over seeds in percent: "87.39% ± 0.12", or "(1 seed)" without a std."""
    mean, std = pair
    return f"{100 * mean:.2f}%" + (f" ± {100 * std:.2f}" if std is not None else " (1 seed)")


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


# Started straight from a benchmark, a child's peak memory (ru_maxrss) would count the benchmark's own:
# Linux carries the resident set of the process that forks and execs into the child's peak (a 1.5 GB
# parent gives `python -c pass` a 1.5 GB peak). So the child starts from this small launcher, which
# forks it, waits for it, and writes the child's own resource use to the file named first.
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({k: getattr(usage, k) for k in dir(usage) if k.startswith("ru_")}, f)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def start_python(args: list[str], usage: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python ARGS`` in the project's root, started through the launcher (above), which writes the
    child's own resource use to ``usage`` when it ends; stdout and stderr to ``log``. In a session of
    its own, so that ``os.killpg(p.pid, ...)`` stops the launcher and the child together."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(usage), *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def run_python(args: list[str], env: dict[str, str] | None = None, quiet: bool = False) -> SimpleNamespace:
    """``python ARGS`` in the project's root, run to its end: its own resource use (``os.wait4``'s
    fields, ru_maxrss, ru_utime, ru_minflt...: peak memory, CPU seconds, page faults), measured by a
    small launcher (above). Exits with one line if it fails; ``quiet``: no stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "usage.json"
        code = subprocess.run([sys.executable, "-c", _LAUNCHER, str(report), *args], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL if quiet else None).returncode
        if code != 0:
            raise SystemExit(f"error: python {' '.join(args)} exited with {code}")
        return SimpleNamespace(**json.loads(report.read_text()))
