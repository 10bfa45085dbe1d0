"""The HTTP answers' declared shapes, for ``/docs`` (OpenAPI) and for tests that check a body against them.

A verdict is :class:`models.verdict.VerdictBody` (the same model the batch Parquet schema derives from) plus
what only the service knows: the request id, the decoded image's summary, timings and optional heatmaps. The
endpoints build plain dicts and return them as JSON; these models document and test that shape rather than
re-validate every answer on the hot path.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from models.verdict import VerdictBody


def current_request_id() -> str:
    """Serve's id of the request being handled ("" outside a Serve request, e.g. in unit tests).

    It takes the caller's X-Request-ID header when there is one, is returned in the response header, and is on
    every Serve log line of the request, here and in the detector replicas: what makes one request's logs
    findable. Private API: Ray 2.60 has no public accessor for it inside a handler.
    """
    from ray import serve

    try:
        return serve.context._get_serve_request_context().request_id
    except Exception:  # noqa: BLE001 - no Serve request context
        return ""


class ImageSummary(BaseModel):
    width: int
    height: int
    format: str
    mode: str = Field(description="the file's own colour mode, before conversion to RGB")
    frames: int
    bytes: int
    sha256: str


class Timings(BaseModel):
    decode_ms: float
    detectors_ms: float
    fusion_ms: float
    artifacts_ms: float
    total_ms: float


class Heatmap(BaseModel):
    detector: str
    width: int
    height: int
    heatmap_png_base64: str
    overlay_png_base64: str = Field(description="the heatmap in red over the image")


class ServiceVerdict(VerdictBody):
    """``POST /v1/detect``: one image's verdict. When no detector the fusion reads answered, the same body with
    label ``UNKNOWN`` (``decided_by`` none, ``fusion_prob`` null, ``missing`` naming them) comes with status 503;
    ``/v1/detect/batch`` lists it as that file's item and batch scoring writes it as a row, ``error`` null."""

    request_id: str
    image: ImageSummary
    timings: Timings
    artifacts: dict[str, Heatmap] | None = Field(None, description="only with ?artifacts=true")


class ErrorBody(BaseModel):
    """Every 4xx / 5xx that is not a verdict: a stable code, a human sentence, the request id."""

    error: str = Field(description="stable code, e.g. too_large, not_an_image, overloaded, unauthorized")
    detail: object
    request_id: str | None = None


class BatchItem(ServiceVerdict):
    filename: str | None = None


class BatchFileError(ErrorBody):
    filename: str | None = None


class BatchAnswer(BaseModel):
    """``POST /v1/detect/batch``: one result per file, in order, with status 200; a bad file gets its own error
    entry, a file no detector could answer for its ``UNKNOWN`` verdict (what ``/v1/detect`` answers with 503)."""

    request_id: str
    results: list[BatchItem | BatchFileError]


ERROR_RESPONSES = {status: {"model": ErrorBody} for status in (401, 403, 413, 415, 422, 429, 503)}
# /v1/detect's 503 is either a refusal (ErrorBody: overloaded) or the UNKNOWN verdict (ServiceVerdict).
DETECT_RESPONSES = {
    **ERROR_RESPONSES,
    503: {
        "model": ServiceVerdict | ErrorBody,
        "description": "overloaded (ErrorBody, with Retry-After), or the UNKNOWN verdict: no detector the fusion "
        "reads answered (ServiceVerdict, label UNKNOWN)",
    },
}
