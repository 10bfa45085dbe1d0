"""The fusion ingress: HTTP in, every enabled detector in parallel, one explained verdict out.

``build_app(args)`` (Ray Serve's typed application builder) binds one :class:`DetectorDeployment` per
enabled detector and this FastAPI ingress in front of them::

    POST /v1/detect          multipart field "file", or JSON {"image_b64": ...} / {"url": ...}, or a raw
                             image body; ?artifacts=true adds heatmaps as base64 PNG
    POST /v1/detect/batch    multipart, several "files": one result each, in order
    GET  /healthz            200 only when every enabled detector is ready
    GET  /v1/detectors       names, features, versions, status, "fusion input" or "context"; the fusion model
    GET  /v1/config          input limits (and whether URL input is on), threshold, uncertain range, fusion kind
    GET  /docs               OpenAPI
    GET  /                   the web page (serve_app/web.py, serve_app/static)

An image is decoded once (``models.image_input.decode_image``), put in the object store once, and every
detector receives that reference. Each detector call has its own timeout; one that fails or is slow is
listed in ``missing`` and the fusion model takes its missing-feature path.
"""

import asyncio
import base64
import binascii
import io
import json
import logging
import time
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from PIL import Image
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram

import models
from deployments.config import AppArgs
from deployments.detector import LATENCY_BUCKETS_MS, DetectorDeployment
from models.fusion import DetectorOutcome, json_safe
from models.image_input import DecodedImage, ImageInputError
from serve_app.admission import BodyTooLarge, Overloaded
from serve_app.auth import GateMiddleware, install_gate
from serve_app.fast_json import FastJSONResponse as JSONResponse  # orjson: the same JSON, rendered sooner
from serve_app.responses import DETECT_RESPONSES, ERROR_RESPONSES, BatchAnswer, ServiceVerdict, current_request_id
from serve_app.url_input import fetch_url
from serve_app.web import router as web_router

log = logging.getLogger("ray.serve")
ARTIFACT_MAX_SIDE = 1024  # heatmaps are returned at most this large, to keep responses small
PUBLIC_INPUT_FIELDS = {"max_bytes", "max_pixels", "min_side", "max_batch_files", "allow_url"}  # GET /v1/config

api = FastAPI(
    title="imgverify",
    version="0.1.0",
    description="Was this image made by a generative model or captured by a camera? And why.",
)
api.include_router(web_router)  # GET / and /static/*: the page for people
api.add_middleware(GateMiddleware)  # API keys, rate limits, admission, 503 overloaded (serve_app/auth.py)


class RequestError(ImageInputError):
    """A request that carries no usable image (wrong field, bad JSON, ...): same JSON error shape."""


def _error_response(request: Request, code: str, detail: Any, status: int) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, "request_id": current_request_id()}, status_code=status)


@api.exception_handler(ImageInputError)
async def _image_error(request: Request, err: ImageInputError) -> JSONResponse:
    return _error_response(request, err.code, err.message, err.status)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    return _error_response(request, "invalid_request", json_safe(err.errors()), 422)


def _encode_artifacts(image: DecodedImage, outcomes: list[DetectorOutcome]) -> dict[str, dict[str, Any]]:
    """Each heatmap as a grey PNG and as a red overlay on the image, both base64, at most 1024 px."""
    encoded = {}
    base = image.to_pil()
    base.thumbnail((ARTIFACT_MAX_SIDE, ARTIFACT_MAX_SIDE))
    for outcome in outcomes:
        if outcome.status != "ok" or outcome.result is None:
            continue
        for name, heatmap in outcome.result.artifacts.items():
            grey = Image.fromarray(np.clip(np.asarray(heatmap, dtype=np.float32) * 255, 0, 255).astype(np.uint8))
            grey = grey.resize(base.size, Image.Resampling.BILINEAR)
            red = Image.new("RGB", base.size, (255, 0, 0))
            overlay = Image.composite(red, base, grey.point(lambda v: int(v * 0.6)))
            encoded[name] = {
                "detector": outcome.name,
                "width": base.width,
                "height": base.height,
                "heatmap_png_base64": _png_base64(grey),
                "overlay_png_base64": _png_base64(overlay),
            }
    return encoded


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class FusionIngress:
    def __init__(self, args: dict[str, Any], detectors: dict[str, DeploymentHandle]):
        self.args = AppArgs.model_validate(args)
        self.handles = detectors
        self.timeouts = {d.name: d.timeout_s for d in self.args.detectors}
        self.verdict = self.args.verdict()
        self.limits = self.args.input.limits()
        self.gate = install_gate(self.args)  # keys, rate limits, admission of this replica
        self.detector_ms = Histogram(
            "imgverify_detector_latency_ms",
            description="Per-detector latency seen by the ingress (queueing and batching included).",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("detector",),
        )
        self.outcomes = Counter(
            "imgverify_detector_outcomes_total",
            description="Detector calls by outcome: ok, failed, timeout, skipped.",
            tag_keys=("detector", "status"),
        )
        self.verdicts = Counter("imgverify_verdicts_total", description="Verdicts by label.", tag_keys=("label",))

    # ---- endpoints ----------------------------------------------------------------------------------
    @api.post("/v1/detect", summary="Score one image", response_model=ServiceVerdict, responses=DETECT_RESPONSES)
    async def detect(
        self, request: Request, artifacts: bool = Query(False, description="add heatmaps as base64 PNG")
    ) -> JSONResponse:
        data = await self._image_bytes(request)
        body = await self._score(data, artifacts)
        status = 503 if body["label"] == "UNKNOWN" else 200
        return JSONResponse(json_safe(body), status_code=status)

    @api.post(
        "/v1/detect/batch",
        summary="Score several images (multipart field 'files'), one result each",
        response_model=BatchAnswer,
        responses=ERROR_RESPONSES,
    )
    async def detect_batch(self, request: Request, artifacts: bool = Query(False)) -> JSONResponse:
        form = await self._form(request, max_files=self.args.input.max_batch_files)
        uploads = [v for k, v in form.multi_items() if k == "files" and hasattr(v, "read")]
        if not uploads:
            raise RequestError(
                "missing_files", f"multipart field 'files' not found; got fields {sorted(form.keys())}", 422
            )

        async def one(upload) -> dict[str, Any]:
            try:
                return await self._score(await upload.read(), artifacts)
            except ImageInputError as err:  # this file's own error; the others go on
                return err.to_dict()

        results = await asyncio.gather(*(one(u) for u in uploads))
        for upload, result in zip(uploads, results):
            result["filename"] = upload.filename
        return JSONResponse(json_safe({"request_id": current_request_id(), "results": results}))

    @api.get("/healthz", summary="Ready only when every enabled detector is")
    async def healthz(self) -> JSONResponse:
        statuses = await self._detector_statuses(timeout_s=5.0)
        ready = all(s["status"] == "ready" for s in statuses.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "detectors": statuses}, status_code=200 if ready else 503
        )

    @api.get("/v1/detectors", summary="Enabled detectors: features, versions, status, fusion input or context")
    async def detectors(self) -> JSONResponse:
        statuses = await self._detector_statuses(timeout_s=10.0)
        for name, info in statuses.items():
            info["role"] = self.verdict.roles.get(name)  # "fusion input" or "context" (reported, cannot decide)
        return JSONResponse(
            json_safe(
                {
                    "detectors": statuses,
                    "fusion": self.verdict.describe(),
                }
            )
        )

    @api.get("/v1/config", summary="What callers may send (input limits, URL input) and how a verdict is read")
    async def config(self) -> JSONResponse:
        return JSONResponse(
            {
                "input": self.args.input.model_dump(include=PUBLIC_INPUT_FIELDS),
                "detectors": self.args.detector_names(),
                # the detectors that add a heatmap to ?artifacts=true
                "heatmaps": [n for n in self.args.detector_names() if models.has_artifacts(n)],
                "auth_required": self.gate.keys.enabled,  # /v1/config is open; the page then asks for a key
                "fusion": {
                    "threshold": self.verdict.threshold,
                    "uncertain_range": list(self.verdict.uncertain_range),
                    "model": self.verdict.fusion.version,
                    "kind": self.verdict.fusion.kind,  # "rule": an uncalibrated mean decides (asked for by the config)
                    "calibrated": self.verdict.fusion.calibrated,
                },
            }
        )

    # ---- the pipeline for one image -------------------------------------------------------------------
    async def _score(self, data: bytes, artifacts: bool) -> dict[str, Any]:
        started = time.perf_counter()
        image = await self.gate.decode(data, self.limits)  # decode_image in a thread, within the pixel budget
        decoded = time.perf_counter()
        image_ref = ray.put(image)  # once; every detector gets this reference
        outcomes = await asyncio.gather(
            *(self._call_detector(name, handle, image_ref, artifacts) for name, handle in self.handles.items())
        )
        detected = time.perf_counter()
        body = self.verdict.decide(list(outcomes), image.warnings)
        fused = time.perf_counter()
        if artifacts:
            body["artifacts"] = _encode_artifacts(image, outcomes)
        body["request_id"] = current_request_id()
        body["image"] = image.summary()
        done = time.perf_counter()
        body["timings"] = {
            "decode_ms": round((decoded - started) * 1000, 2),
            "detectors_ms": round((detected - decoded) * 1000, 2),
            "fusion_ms": round((fused - detected) * 1000, 2),
            "artifacts_ms": round((done - fused) * 1000, 2),
            "total_ms": round((done - started) * 1000, 2),
        }
        self.verdicts.inc(tags={"label": body["label"]})
        log.info(
            "verdict %s fusion_prob=%s missing=%s total_ms=%.1f",
            body["label"],
            body["fusion_prob"],
            body["missing"],
            body["timings"]["total_ms"],
        )
        return body

    async def _call_detector(
        self, name: str, handle: DeploymentHandle, image_ref: ray.ObjectRef, artifacts: bool
    ) -> DetectorOutcome:
        timeout = self.timeouts[name]
        started = time.perf_counter()
        response = handle.detect.remote(image_ref, artifacts)
        try:
            result, version = await asyncio.wait_for(response, timeout)
            outcome = DetectorOutcome.from_result(name, result, version, (time.perf_counter() - started) * 1000)
        except BackPressureError as err:  # this detector's Serve queue is full: the whole request is overloaded
            raise Overloaded(f"detector {name}: {err}", self.args.admission.retry_after_s) from err
        except asyncio.TimeoutError:
            response.cancel()
            outcome = DetectorOutcome.timed_out(name, timeout)
        except Exception as err:  # noqa: BLE001 - a broken detector is reported as missing, never invented
            outcome = DetectorOutcome.raised(name, err, (time.perf_counter() - started) * 1000)
        self.outcomes.inc(tags={"detector": name, "status": outcome.status})
        if outcome.status != "ok":
            log.warning("detector %s %s: %s", name, outcome.status, outcome.error)
        else:
            self.detector_ms.observe(outcome.latency_ms or 0.0, tags={"detector": name})
        return outcome

    async def _detector_statuses(self, timeout_s: float) -> dict[str, dict[str, Any]]:
        async def one(name: str, handle: DeploymentHandle) -> tuple[str, dict[str, Any]]:
            try:
                info = await asyncio.wait_for(handle.describe.remote(), timeout_s)
                return name, {"status": "ready", **info}
            except Exception as err:  # noqa: BLE001 - reported as this detector's status
                return name, {"status": "unavailable", "error": f"{type(err).__name__}: {err}"[:500]}

        return dict(await asyncio.gather(*(one(n, h) for n, h in self.handles.items())))

    # ---- reading the request ---------------------------------------------------------------------------
    async def _image_bytes(self, request: Request) -> bytes:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        # Every body read below is bounded by GateMiddleware (serve_app/auth.py): a Content-Length over the limit
        # never gets here, and a chunked body is cut with 413 too_large as it passes the limit while being read.
        if content_type == "multipart/form-data":
            form = await self._form(request, max_files=1)
            upload = form.get("file")
            if upload is None or not hasattr(upload, "read"):
                raise RequestError(
                    "missing_file", f"multipart field 'file' not found; got fields {sorted(form.keys())}", 422
                )
            return await upload.read()
        if content_type == "application/json":
            return await self._json_image(request)
        if content_type.startswith("image/") or content_type in ("application/octet-stream", ""):
            return await request.body()
        raise RequestError(
            "unsupported_content_type",
            f"send multipart/form-data (field 'file'), application/json or an image body, not {content_type!r}",
            415,
        )

    async def _json_image(self, request: Request) -> bytes:
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError("invalid_json", f"the body is not valid JSON: {err}") from err
        if not isinstance(payload, dict) or not ({"image_b64", "url"} & payload.keys()):
            raise RequestError("missing_image", "JSON body needs 'image_b64' or 'url'", 422)
        if "image_b64" in payload:
            text = payload["image_b64"]
            if not isinstance(text, str):
                raise RequestError("invalid_base64", "'image_b64' must be a string")
            if text.startswith("data:") and "," in text:
                text = text.split(",", 1)[1]  # a data URL
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as err:
                raise RequestError("invalid_base64", f"'image_b64' is not valid base64: {err}") from err
        if not self.args.input.allow_url:
            raise RequestError("url_input_disabled", "URL input is disabled on this service (input.allow_url)", 403)
        url = payload["url"]
        if not isinstance(url, str):
            raise RequestError("url_invalid", "'url' must be a string")
        return await fetch_url(
            url, self.limits.max_bytes, self.args.input.url_timeout_s, self.args.input.url_max_redirects
        )

    @staticmethod
    async def _form(request: Request, max_files: int):
        try:
            return await request.form(max_files=max_files, max_fields=16)
        except BodyTooLarge:  # cut while read: GateMiddleware answers 413 too_large
            raise
        except Exception as err:  # noqa: BLE001 - malformed multipart of any kind is the caller's error
            raise RequestError("invalid_multipart", f"cannot parse the multipart body: {err}") from err


def build_app(args: AppArgs) -> serve.Application:
    """Ray Serve's typed application builder: one deployment per detector, the ingress in front. A config that names
    no fusion model is refused here, at deploy time (the ingress checks the artifact itself when it loads it)."""
    args.require_fusion()
    detectors = {
        # user_config={} so that reconfigure always runs (and loads the detector) once; the Serve config's
        # deployments list overrides it, and later changes to it swap weights on live replicas.
        name: DetectorDeployment.options(name=name, user_config={}).bind(name)
        for name in args.detector_names()
    }
    # The ingress' shutdown budget covers Serve's drain window plus the slowest request (a config may give more).
    ingress = FusionIngress.options(graceful_shutdown_timeout_s=args.ingress_shutdown_s())
    return ingress.bind(args.model_dump(), detectors)
