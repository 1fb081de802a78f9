"""HTTP prediction service: FastAPI on uvicorn, backed by an ONNX model or a checkpoint.

Endpoints:
    GET  /health          status, backend, model file, class names
    POST /predict         multipart field ``file``: one PNG or JPEG of any size
    POST /predict/batch   multipart field ``files`` (repeated): up to --max-files images
Both predict endpoints take ``?top_k=3`` (1 to the number of classes) and return
the top-k classes with their softmax probabilities. Images are converted to RGB
and resized to 32x32 as the training data were (bilinear).

Bad input never reaches the model and never stops the service: no file (400),
bytes that are not an image or a truncated image (400), an image that is not PNG
or JPEG (415), an upload over --max-bytes (413), more pixels than --max-pixels
(413, a decompression-bomb guard checked from the header before decoding).
Errors are JSON: ``{"error": "..."}``.

Usage:
    python -m cifar.serve --model runs/smallcnn/model.onnx [--host 127.0.0.1] [--port 8000]
    curl -F file=@cat.jpg 'http://127.0.0.1:8000/predict?top_k=3'
"""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from cifar.cli import ArgParser, UsageError, fail, number
from cifar.export import classifier_from_checkpoint, onnx_session, run_session, run_torch
from cifar.sources import IMAGE_SIZE, to_rgb32

FORMATS = ("PNG", "JPEG")


class BadImage(ValueError):
    """An upload the service refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 5 * 1024 * 1024     # per uploaded file
    max_pixels: int = 40_000_000         # width x height, checked before decoding
    max_files: int = 64                  # per batch request


def decode_image(data: bytes, limits: Limits, name: str = "file") -> np.ndarray:
    """PNG or JPEG bytes to a uint8 (3, 32, 32) RGB array, or BadImage."""
    if not data:
        raise BadImage(400, f"{name} is empty")
    if len(data) > limits.max_bytes:
        raise BadImage(413, f"{name} is {len(data):,} bytes; the limit is {limits.max_bytes:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.UnidentifiedImageError:
        raise BadImage(415, f"{name} is not a PNG or JPEG image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(413, f"{name} has too many pixels") from None
    except (OSError, SyntaxError, ValueError) as e:  # a broken header
        raise BadImage(400, f"{name} could not be read: {e}") from None
    with im:
        if im.width * im.height > limits.max_pixels:
            raise BadImage(413, f"{name} is {im.width}x{im.height} pixels; the limit is {limits.max_pixels:,}")
        try:
            im.draft("RGB", (IMAGE_SIZE * 2, IMAGE_SIZE * 2))  # JPEG: decode at a reduced scale
            rgb = to_rgb32(im)
        except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data
            raise BadImage(400, f"{name} could not be decoded: {e}") from None
    return rgb.transpose(2, 0, 1)


class Predictor:
    """Class probabilities of uint8 (N, 3, 32, 32) images, from an .onnx file or a .pt checkpoint."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"no model file {self.path}")
        if self.path.suffix not in (".onnx", ".pt"):
            raise ValueError(f"{self.path} is neither a model.onnx nor a .pt checkpoint")
        if self.path.suffix == ".onnx":
            session, self.classes = onnx_session(self.path)
            self.backend = "onnxruntime"
            self._logits = lambda x: run_session(session, x)
        else:
            model, self.classes, _ = classifier_from_checkpoint(self.path)
            self.backend = "pytorch"
            self._logits = lambda x: run_torch(model, x)
        if not self.classes:
            raise ValueError(f"{self.path} names no classes")

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        logits = self._logits(np.ascontiguousarray(images, dtype=np.uint8)).astype(np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def top_k(self, images: np.ndarray, k: int) -> list[list[dict]]:
        probs = self.probabilities(images)
        order = np.argsort(-probs, axis=1)[:, :k]
        return [[{"class": self.classes[j], "probability": float(p[j])} for j in row]
                for p, row in zip(probs, order)]


class BodyLimit:
    """ASGI middleware: refuse request bodies over the endpoint's limit before they are spooled.

    The limit is one file (plus multipart overhead), or ``max_files`` files on the batch
    endpoint. A declared Content-Length over it is refused at once; a chunked body is
    counted as it arrives and refused when it passes the limit.
    """

    OVERHEAD = 64 * 1024

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        files = self.limits.max_files if scope["path"].endswith("/batch") else 1
        limit = self.limits.max_bytes * files + self.OVERHEAD
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            response = JSONResponse({"error": f"request body is {int(length):,} bytes; the limit is {limit:,}"},
                                    status_code=413)
            return await response(scope, receive, send)
        received, too_large = 0, False

        async def counted_receive():
            nonlocal received, too_large
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                too_large = True  # stop reading; the answer below replaces the app's parse error
                raise BadImage(413, f"request body passed the limit of {limit:,} bytes")
            return message

        async def guarded_send(message):
            if not too_large:
                return await send(message)
            if message["type"] == "http.response.start":
                await JSONResponse({"error": f"request body passed the limit of {limit:,} bytes"},
                                   status_code=413)(scope, receive, send)

        return await self.app(scope, counted_receive, guarded_send)


def create_app(predictor: Predictor, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="CIFAR-10 classifier", version="1")
    app.add_middleware(BodyLimit, limits=limits)

    @app.exception_handler(BadImage)
    async def bad_image(_: Request, e: BadImage):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError):
        where = ", ".join(".".join(str(p) for p in err["loc"]) + ": " + err["msg"] for err in e.errors())
        return JSONResponse({"error": f"bad request: {where}"}, status_code=400)

    def read(upload: UploadFile, name: str) -> np.ndarray:
        data = upload.file.read(limits.max_bytes + 1)
        return decode_image(data, limits, name)

    def check_k(top_k: int) -> int:
        if not 1 <= top_k <= len(predictor.classes):
            raise BadImage(400, f"top_k must be 1..{len(predictor.classes)}, got {top_k}")
        return top_k

    @app.get("/health")
    def health():
        return {"status": "ok", "backend": predictor.backend, "model": predictor.path.name,
                "classes": predictor.classes}

    @app.post("/predict")
    def predict(file: UploadFile | None = File(None), top_k: int = Query(3)):
        k = check_k(top_k)
        if file is None:
            raise BadImage(400, "no file: send the image as multipart form field 'file'")
        image = read(file, file.filename or "file")
        return {"filename": file.filename, "predictions": predictor.top_k(image[None], k)[0]}

    @app.post("/predict/batch")
    def predict_batch(files: list[UploadFile] | None = File(None), top_k: int = Query(3)):
        k = check_k(top_k)
        if not files:
            raise BadImage(400, "no files: send the images as repeated multipart form field 'files'")
        if len(files) > limits.max_files:
            raise BadImage(413, f"{len(files)} files; the limit is {limits.max_files} per request")
        images = np.stack([read(f, f.filename or f"files[{i}]") for i, f in enumerate(files)])
        return {"results": [{"filename": f.filename, "predictions": p}
                            for f, p in zip(files, predictor.top_k(images, k))]}

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgParser(prog="python -m cifar.serve", description="Serve a CIFAR-10 model over HTTP.")
    parser.add_argument("--model", required=True, help="model.onnx (onnxruntime) or a .pt checkpoint")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=number(int, 1, 65535), default=8000)
    parser.add_argument("--max-bytes", type=number(int, 1, 1 << 30), default=Limits.max_bytes,
                        help="per uploaded file")
    parser.add_argument("--max-pixels", type=number(int, 1, 10**9), default=Limits.max_pixels)
    parser.add_argument("--max-files", type=number(int, 1, 10_000), default=Limits.max_files,
                        help="per batch request")
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        return fail(e)
    try:
        predictor = Predictor(args.model)
    except (ValueError, FileNotFoundError) as e:
        return fail(e)
    import uvicorn

    app = create_app(predictor, Limits(args.max_bytes, args.max_pixels, args.max_files))
    print(f"serving {args.model} ({predictor.backend}) on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
