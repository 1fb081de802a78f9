"""Benchmark: the prediction service under bounded load on loopback.

Starts ``python -m cifar.serve`` on a free loopback port, then C client threads
send N ``POST /predict`` requests in all (each thread one at a time, so at most C
are in flight), with real CIFAR-10 test JPEGs when the data set is found
(``$CIFAR10_DIR/test``), else synthetic PNGs. Records requests/s, latency
percentiles and errors; the first 20 requests warm up and are not counted.

Usage:
    python bench/serve.py MODEL [--concurrency 4] [--requests 600]
Writes results/bench/serve.json; ``BLOCKS``: the sentences the docs quote from it.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, read_result, write_result  # noqa: E402

WARMUP = 20


def sample_images(limit: int = 64) -> tuple[list[bytes], str]:
    test = Path(os.environ.get("CIFAR10_DIR") or "data") / "test"
    files = sorted(test.glob("*/*.jpg"))[:: max(1, len(list(test.glob("*/*.jpg"))) // limit)][:limit]
    if files:
        return [f.read_bytes() for f in files], f"{len(files)} CIFAR-10 test JPEGs from {test}"
    rng = np.random.default_rng(0)
    out = []
    for _ in range(limit):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out, f"{limit} synthetic 32x32 PNGs"


def serve_line() -> str:
    """The prediction service under bounded load (serve.json)."""
    d = read_result("serve")
    lat = d["latency_ms"]
    return (f"**{d['requests_per_s']:.0f} requests/s, latency p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms**, "
            f"{d['errors']} errors")


# The sentences the docs quote from this script's results files (bench/blocks.py places them).
BLOCKS = {"serve_line": serve_line}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="model.onnx or a .pt checkpoint")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "serve.json"))
    args = parser.parse_args()

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cifar.serve", "--model", args.model, "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if server.poll() is not None:
                sys.exit(f"error: the server exited: {server.stderr.read().strip()}")
            try:
                health = httpx.get(f"{url}/health", timeout=2).json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            sys.exit("error: the server did not start within 2 minutes")
        images, source = sample_images()
        latencies: list[float] = []
        errors = 0
        lock = threading.Lock()
        counter = iter(range(args.requests))

        def client() -> None:
            nonlocal errors
            with httpx.Client(base_url=url, timeout=60) as c:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    start = time.perf_counter()
                    r = c.post("/predict", files={"file": ("img.jpg", images[i % len(images)])})
                    took = time.perf_counter() - start
                    with lock:
                        latencies.append(took)
                        errors += r.status_code != 200

        for _ in range(WARMUP):  # sequential warm-up: the server loads lazily what it loads
            httpx.post(f"{url}/predict", files={"file": ("img.jpg", images[0])}, timeout=60)
        threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)

    ms = np.array(latencies) * 1000
    result = {
        "command": f"python bench/serve.py {args.model} --concurrency {args.concurrency} --requests {args.requests}",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "backend": health["backend"], "images": source, "concurrency": args.concurrency,
        "requests": len(latencies), "errors": errors, "wall_seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                       "p99": float(np.percentile(ms, 99)), "max": float(ms.max())},
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
