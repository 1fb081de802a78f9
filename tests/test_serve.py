"""The prediction service, run for real: a uvicorn process on loopback and an HTTP client."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.common import free_port
from cifar.serve import BadImage, Limits, Predictor, decode_image
from tests.conftest import CLASSES, synthetic_images

ROOT = Path(__file__).resolve().parents[1]


def encode(array: np.ndarray, fmt: str = "PNG", size: tuple[int, int] | None = None) -> bytes:
    im = Image.fromarray(array.transpose(1, 2, 0))
    if size:
        im = im.resize(size)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
    data = bytearray(encode(np.zeros((3, 1, 1), np.uint8)))
    ihdr = 8 + 8  # signature, then length and type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


@pytest.fixture(scope="module")
def server(tiny_run):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cifar.serve", "--model", str(tiny_run / "best.pt"),
                             "--port", str(port), "--max-bytes", "200000", "--max-pixels", "4000000",
                             "--max-files", "4"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("server did not answer /health within 120 s")
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client
    proc.terminate()
    proc.wait(timeout=30)


def test_health(server, tiny_run):
    body = server.get("/health").json()
    assert body == {"status": "ok", "backend": "pytorch", "model": "best.pt", "classes": CLASSES}


def test_predict_png_matches_the_model(server, tiny_run):
    x, _ = synthetic_images(1, 7)
    image = x[0].numpy()
    r = server.post("/predict?top_k=2", files={"file": ("a.png", encode(image), "image/png")})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 2 and preds[0]["probability"] >= preds[1]["probability"]
    expected = Predictor(tiny_run / "best.pt").probabilities(image[None])[0]
    assert preds[0]["class"] == CLASSES[int(expected.argmax())]
    assert preds[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-5)


def test_predict_large_jpeg_is_resized(server):
    x, _ = synthetic_images(1, 8)
    jpeg = encode(x[0].numpy(), "JPEG", size=(640, 480))
    r = server.post("/predict", files={"file": ("big.jpg", jpeg, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 3
    assert sum(p["probability"] for p in r.json()["predictions"]) <= 1 + 1e-6


def test_predict_batch(server):
    x, _ = synthetic_images(3, 9)
    files = [("files", (f"{i}.png", encode(x[i].numpy()), "image/png")) for i in range(3)]
    r = server.post("/predict/batch?top_k=1", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["filename"] for res in results] == ["0.png", "1.png", "2.png"]
    assert all(len(res["predictions"]) == 1 for res in results)


@pytest.mark.parametrize("request_kwargs, status, message", [
    ({}, 400, "no file"),
    ({"files": {"file": ("x.png", b"not an image at all", "image/png")}}, 415, "not a PNG or JPEG"),
    ({"files": {"file": ("gif.gif", b"GIF89a" + bytes(40), "image/gif")}}, 415, "not a PNG or JPEG"),
    ({"files": {"file": ("t.png", encode(np.full((3, 64, 64), 7, np.uint8))[:-30], "image/png")}}, 400,
     "could not be decoded"),
    ({"files": {"file": ("huge.png", bytes(250_000), "image/png")}}, 413, "the limit is 200,000"),
    ({"files": {"file": ("bomb.png", png_claiming(60_000, 60_000), "image/png")}}, 413, "pixels"),
    ({"files": {"file": ("wide.png", png_claiming(4000, 2000), "image/png")}}, 413, "4000x2000 pixels"),
    ({"files": {"file": ("e.png", b"", "image/png")}}, 400, "empty"),
])
def test_bad_input_gets_a_json_4xx_and_the_service_keeps_serving(server, request_kwargs, status, message):
    r = server.post("/predict", **request_kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert server.get("/health").status_code == 200
    x, _ = synthetic_images(1, 1)
    ok = server.post("/predict", files={"file": ("ok.png", encode(x[0].numpy()), "image/png")})
    assert ok.status_code == 200


def test_bad_batch_and_parameters(server):
    x, _ = synthetic_images(1, 1)
    png = encode(x[0].numpy())
    assert server.post("/predict?top_k=0", files={"file": ("a.png", png, "image/png")}).status_code == 400
    assert server.post("/predict?top_k=x", files={"file": ("a.png", png, "image/png")}).status_code == 400
    too_many = [("files", (f"{i}.png", png, "image/png")) for i in range(5)]
    r = server.post("/predict/batch", files=too_many)
    assert r.status_code == 413 and "limit is 4" in r.json()["error"]
    mixed = [("files", ("a.png", png, "image/png")), ("files", ("b.png", b"junk", "image/png"))]
    r = server.post("/predict/batch", files=mixed)
    assert r.status_code == 415 and "b.png" in r.json()["error"]
    assert server.post("/predict/batch").status_code == 400
    r = server.get("/nowhere")
    assert r.status_code == 404 and "error" in r.json()
    # A body larger than the endpoint allows is refused from its Content-Length ...
    r = server.post("/predict", content=bytes(2_000_000), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and "request body" in r.json()["error"]
    # ... or, sent in chunks without one, as it arrives.
    boundary = b"xyz"
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")

    def chunks():
        yield head
        for _ in range(40):
            yield bytes(50_000)

    r = server.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and "passed the limit" in r.json()["error"]
    assert server.get("/health").status_code == 200


def test_decode_image_units():
    x, _ = synthetic_images(1, 2)
    out = decode_image(encode(x[0].numpy()), Limits())
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, x[0].numpy())  # PNG is lossless: same pixels back
    with pytest.raises(BadImage) as e:
        decode_image(b"\x89PNG\r\n\x1a\n" + bytes(20), Limits())
    assert e.value.status in (400, 415)


@pytest.mark.parametrize("name, content, message", [
    ("nope.onnx", None, "error: no model file"),
    ("bad.onnx", b"not a model", "error: cannot load ONNX model"),
    ("bad.pt", b"not a checkpoint", "error: cannot read checkpoint"),
])
def test_serve_rejects_a_bad_model_in_one_line(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "cifar.serve", "--model", str(tmp_path / name)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith(message) and len(r.stderr.strip().splitlines()) == 1
