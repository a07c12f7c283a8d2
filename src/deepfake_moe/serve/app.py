"""The HTTP API and the web page, as a FastAPI app around a Service.

Routes: `/` (the page), `/v1/predict`, `/v1/explain`, `/v1/model`, `/healthz`; OpenAPI docs at `/docs`
and `/redoc` with their assets served from the fastapi-offline package, so nothing needs a CDN.
"""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepfake_moe import __version__
from deepfake_moe.serve.batcher import Overloaded
from deepfake_moe.serve.service import Service
from deepfake_moe.serve.uploads import FIELD, Upload, UploadError, read_uploads

STATIC = resources.files("deepfake_moe.serve") / "static"

MULTIPART_FILES = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": [FIELD],
            "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}},
        }}},
    }
}


class Result(BaseModel):
    """One uploaded file: its score, or why it was not scored (fields the predictor adds pass through)."""

    model_config = ConfigDict(extra="allow")
    name: str
    probability: float | None
    verdict: str
    threshold: float
    expert_probabilities: list[float]
    error: str
    status: int


class Results(BaseModel):
    results: list[Result]


class Problem(BaseModel):
    reason: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "malformed request"},
    413: {"model": Problem, "description": "file, image or request too large, or its decoding needs more memory "
          "than the decode budget"},
    415: {"model": Problem, "description": "not multipart, or not an image in an accepted format"},
    422: {"model": Problem, "description": "an image that cannot be decoded: empty, truncated, corrupt, or "
          "stopped at the decode timeout"},
    503: {"model": Problem, "description": "overloaded (queue full) or not answered within the timeout"},
}


def create_app(service: Service) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPIOffline(
        title="deepfake-moe",
        version=__version__,
        description=f"Tells real images from deepfakes with a mixture of experts. Model: {service.config.name}.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_exception_handler(UploadError, _refused)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # 404, 405: JSON with a reason too
    app.add_exception_handler(Exception, _internal_error)
    app.mount("/static", StaticFiles(packages=[("deepfake_moe.serve", "static")]), name="static")
    _api_routes(app, service)
    _page_routes(app)
    return app


def _api_routes(app: FastAPI, service: Service) -> None:
    # The documented model is Results; the handler answers JSONResponse itself (no second validation pass).
    @app.post("/v1/predict", response_model=None, openapi_extra=MULTIPART_FILES,
              responses={200: {"model": Results}, **ERRORS})
    async def predict(request: Request):
        """Score one or more images (multipart field `file`, repeated): one result per file, in order.

        The status is 200 when at least one file was scored; when none was, it is the first file's
        (413 too large, 415 unsupported format, 422 undecodable) with the same body."""
        started = asyncio.get_running_loop().time()
        uploads = await _read(request, service)
        results = await _within(service.predict(uploads), started, service)
        if any(r["status"] == 200 for r in results):
            return JSONResponse({"results": results})
        first = results[0]
        return JSONResponse({"results": results, "reason": f"{first['name']}: {first['error']}"}, first["status"])

    @app.post("/v1/explain", openapi_extra=MULTIPART_FILES, responses={
        200: {"content": {"image/png": {}}, "description": "image and Grad-CAM overlay, side by side"},
        501: {"model": Problem, "description": "the model is an ONNX file"}, **ERRORS})
    async def explain(request: Request):
        """Grad-CAM overlay of one image as a PNG: where the experts see evidence of manipulation."""
        started = asyncio.get_running_loop().time()
        uploads = await _read(request, service)
        if len(uploads) != 1:
            raise UploadError(400, f"send exactly one file to explain, got {len(uploads)}")
        png, p = await _within(service.explain(uploads[0]), started, service)
        verdict = "fake" if p >= service.config.threshold else "real"
        return Response(png, media_type="image/png", headers={"X-Probability": f"{p:.6f}", "X-Verdict": verdict})

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """The experts, input size, threshold, runtime, limits, and what the model was trained and calibrated on."""
        return service.model_info()

    @app.get("/healthz")
    async def healthz():
        """200 while the scoring worker runs, with the queue's state; 503 if it has stopped."""
        health = service.health()
        return JSONResponse(health, 200 if health["status"] == "ok" else 503)


def _page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")


async def _read(request: Request, service: Service) -> list[Upload]:
    limits = service.limits
    try:
        return await asyncio.wait_for(read_uploads(request.headers, request.stream(), limits), limits.timeout_s)
    except asyncio.TimeoutError:
        raise UploadError(408, f"upload not received within the request timeout of {limits.timeout_s:g} s") from None


async def _within(work, started: float, service: Service):
    """Await `work` within what is left of the request's timeout (the upload took the rest); 503 after it."""
    timeout = service.limits.timeout_s
    try:
        return await asyncio.wait_for(work, max(started + timeout - asyncio.get_running_loop().time(), 0.001))
    except asyncio.TimeoutError:
        raise UploadError(503, f"no answer within the request timeout of {timeout:g} s") from None


async def _refused(request: Request, exc: UploadError) -> JSONResponse:
    return JSONResponse({"reason": exc.reason}, exc.status)


async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
    return JSONResponse({"reason": str(exc)}, 503, headers={"Retry-After": "1"})


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"reason": exc.detail}, exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette still logs the traceback; the client learns what failed, not where.
    return JSONResponse({"reason": f"internal error: {type(exc).__name__}: {exc}"}, 500)
